"""Where invoices are kept: their table, the invoice as a row of it, and a trip's one invoice.

Amounts are stored as the integer units and nanos of `google.type.Money` (exact
and portable). A trip has at most one invoice: creating one looks for the
trip's invoice in the same transaction and returns it if it is the same
(`domain.check_same`), and a unique column makes sure two concurrent creates
(on an engine that lets both look first) cannot both win; the loser is told
which invoice won, or how it differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.type.latlng_pb2 import LatLng
from google.type.money_pb2 import Money
from rideshare.billing.v1.billing_pb2 import Invoice

from services.runtime.aip import timestamp_from_ns
from services.runtime.errors import AlreadyExists, MeshError
from services.runtime.resources import Resource, Row, Store, Tx

from . import domain

MIGRATIONS = Path(__file__).with_name("migrations")
"""The schema: numbered SQL files, a PostgreSQL variant where the engines differ (runtime/migrations.py)."""


def _invoice(row: Row) -> Invoice:
    invoice = Invoice(
        name=f"invoices/{row['id']}",
        trip=row["trip"],
        passenger=row["passenger"],
        amount=Money(
            currency_code=row["currency_code"], units=row["amount_units"], nanos=row["amount_nanos"]
        ),
        distance_meters=row["distance_meters"],
        create_time=timestamp_from_ns(row["create_time"]),
    )
    if row["duration_seconds"] is not None:
        invoice.duration.CopyFrom(Duration(seconds=row["duration_seconds"], nanos=row["duration_nanos"]))
    for place in ("pickup", "dropoff"):
        if row[f"{place}_latitude"] is not None:
            point = LatLng(latitude=row[f"{place}_latitude"], longitude=row[f"{place}_longitude"])
            getattr(invoice, place).CopyFrom(point)
    return invoice


def _columns(invoice: Invoice) -> dict[str, Any]:
    has_duration = invoice.HasField("duration")
    return {
        "trip": invoice.trip,
        "passenger": invoice.passenger,
        "currency_code": invoice.amount.currency_code,
        "amount_units": invoice.amount.units,
        "amount_nanos": invoice.amount.nanos,
        "distance_meters": invoice.distance_meters,
        "duration_seconds": invoice.duration.seconds if has_duration else None,
        "duration_nanos": invoice.duration.nanos if has_duration else None,
        "create_time": invoice.create_time.ToNanoseconds(),
        "pickup_latitude": invoice.pickup.latitude,
        "pickup_longitude": invoice.pickup.longitude,
        "dropoff_latitude": invoice.dropoff.latitude,
        "dropoff_longitude": invoice.dropoff.longitude,
    }


def _trip_invoiced(invoice: Invoice, holder: Invoice | None) -> MeshError:
    """A concurrent create won the trip: how `holder` differs, or ALREADY_EXISTS naming it."""
    if holder is not None:
        try:
            domain.check_same(holder, invoice)
        except MeshError as different:
            return different
    first = holder.name if holder is not None else "another invoice"
    return AlreadyExists(
        f"{invoice.trip} already has an invoice, {first}",
        reason="INVOICE_ALREADY_EXISTS",
        metadata={"invoice": first, "trip": invoice.trip},
    )


INVOICES = Resource(Invoice, _invoice, _columns, unique={"trip": _trip_invoiced})


class InvoiceStore(Store[Invoice]):
    """The kit's Get and List, and Create as 'the trip's one invoice'."""

    async def invoice_trip(self, invoice: Invoice, request: Message) -> Invoice:
        """Record `invoice`, or return the trip's invoice if it is the same one (replayed by request_id)."""

        async def write(tx: Tx) -> Invoice:
            row = await tx.query_one(f"SELECT * FROM {self.table} WHERE trip = ?", (invoice.trip,))
            if row is not None:
                return domain.check_same(_invoice(row), invoice)
            await self.insert(tx, invoice)
            return invoice

        return await self.idempotent(request, write)
