"""Where invoices are kept: the repository interface and its SQLite implementation.

Amounts are stored as the integer units and nanos of `google.type.Money` (exact
and portable); a trip has at most one invoice, enforced by a unique column so
two concurrent creates cannot both win.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Protocol

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.type.money_pb2 import Money
from rideshare.billing.v1.billing_pb2 import Invoice

from services.runtime.aip import timestamp_from_ns
from services.runtime.errors import AlreadyExists, NotFound
from services.runtime.storage import Database

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


class InvoiceStore(Protocol):
    """What the servicer needs from storage; a PostgreSQL store would implement the same."""

    def create(self, invoice: Invoice, request: Message) -> Invoice: ...
    def get(self, invoice_id: str) -> Invoice: ...
    def list(
        self, after: int, limit: int, passenger: str = "", trip: str = ""
    ) -> tuple[list[Invoice], int | None]: ...
    def close(self) -> None: ...


def _row_to_invoice(row: sqlite3.Row) -> Invoice:
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


def _not_found(invoice_id: str) -> NotFound:
    return NotFound(
        f"invoices/{invoice_id} does not exist",
        reason="INVOICE_NOT_FOUND",
        metadata={"name": f"invoices/{invoice_id}"},
    )


class SqliteInvoiceStore:
    """Invoices in the billing service's own SQLite file."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, invoice: Invoice, request: Message) -> Invoice:
        def write(tx: sqlite3.Connection) -> Invoice:
            existing = tx.execute("SELECT id FROM invoices WHERE trip = ?", (invoice.trip,)).fetchone()
            if existing is not None:
                name = f"invoices/{existing['id']}"
                raise AlreadyExists(
                    f"{invoice.trip} already has an invoice, {name}",
                    reason="INVOICE_ALREADY_EXISTS",
                    metadata={"invoice": name, "trip": invoice.trip},
                )
            has_duration = invoice.HasField("duration")
            tx.execute(
                "INSERT INTO invoices (id, trip, passenger, currency_code, amount_units, amount_nanos, "
                "distance_meters, duration_seconds, duration_nanos, create_time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    invoice.name.removeprefix("invoices/"),
                    invoice.trip,
                    invoice.passenger,
                    invoice.amount.currency_code,
                    invoice.amount.units,
                    invoice.amount.nanos,
                    invoice.distance_meters,
                    invoice.duration.seconds if has_duration else None,
                    invoice.duration.nanos if has_duration else None,
                    invoice.create_time.ToNanoseconds(),
                ),
            )
            return invoice

        return self.db.idempotent("CreateInvoice", request, Invoice, write)

    def get(self, invoice_id: str) -> Invoice:
        row = self.db.query_one("SELECT * FROM invoices WHERE id = ?", (invoice_id,))
        if row is None:
            raise _not_found(invoice_id)
        return _row_to_invoice(row)

    def list(
        self, after: int, limit: int, passenger: str = "", trip: str = ""
    ) -> tuple[list[Invoice], int | None]:
        where: list[str] = ["seq > ?"]
        params: list[Any] = [after]
        for column, value in (("passenger", passenger), ("trip", trip)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        rows = self.db.query(
            f"SELECT * FROM invoices WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            (*params, limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [_row_to_invoice(r) for r in rows], (rows[-1]["seq"] if more else None)

    def close(self) -> None:
        self.db.close()
