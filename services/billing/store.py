"""Where invoices are kept: their table, and the invoice as a row of it (the kit does the rest).

Amounts are stored as the integer units and nanos of `google.type.Money` (exact
and portable); a trip has at most one invoice, enforced by a unique column so
two concurrent creates cannot both win, and the loser is told which invoice won.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.type.money_pb2 import Money
from rideshare.billing.v1.billing_pb2 import Invoice

from services.runtime.aip import timestamp_from_ns
from services.runtime.errors import AlreadyExists
from services.runtime.resources import Resource, Row

MIGRATIONS = [
    """
    CREATE TABLE invoices (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        id               TEXT NOT NULL UNIQUE,
        trip             TEXT NOT NULL UNIQUE,
        passenger        TEXT NOT NULL,
        currency_code    TEXT NOT NULL,
        amount_units     INTEGER NOT NULL,
        amount_nanos     INTEGER NOT NULL,
        distance_meters  DOUBLE PRECISION NOT NULL,
        duration_seconds INTEGER,
        duration_nanos   INTEGER,
        create_time      INTEGER NOT NULL
    );
    CREATE INDEX invoices_by_passenger ON invoices (passenger, seq)
    """,
]


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
    }


def _trip_invoiced(invoice: Invoice, holder: Invoice | None) -> AlreadyExists:
    first = holder.name if holder is not None else "another invoice"
    return AlreadyExists(
        f"{invoice.trip} already has an invoice, {first}",
        reason="INVOICE_ALREADY_EXISTS",
        metadata={"invoice": first, "trip": invoice.trip},
    )


INVOICES = Resource(Invoice, _invoice, _columns, unique={"trip": _trip_invoiced})
