"""Where payments are kept: the repository interface and its SQLite implementation.

Exactly once: creating a payment runs in ONE transaction that checks the
invoice is not paid yet, charges through the processor (whose ledger is in the
same database), inserts the payment and stores the answer under the
request_id (`Database.idempotent`). Either all of it commits or none of it
does, so a replay of the request_id, even after a lost answer or a restart,
finds the first payment and charges nothing. A partial unique index keeps an
invoice to one SUCCEEDED payment even if that check were bypassed.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from typing import Any, Protocol

from google.protobuf.message import Message
from google.type.money_pb2 import Money
from rideshare.payments.v1.payments_pb2 import CreatePaymentRequest, Payment, PaymentState

from services.runtime.aip import timestamp_from_ns
from services.runtime.errors import NotFound
from services.runtime.storage import Database

from . import domain
from .processor import LEDGER_SCHEMA, Processor

_SUCCEEDED = PaymentState.Name(PaymentState.PAYMENT_STATE_SUCCEEDED)

MIGRATIONS = [
    f"""
    CREATE TABLE payments (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        id             TEXT NOT NULL UNIQUE,
        invoice        TEXT NOT NULL,
        currency_code  TEXT NOT NULL,
        amount_units   INTEGER NOT NULL,
        amount_nanos   INTEGER NOT NULL,
        payment_method TEXT NOT NULL,
        state          TEXT NOT NULL,
        decline_reason TEXT NOT NULL,
        charge_id      TEXT NOT NULL,
        create_time    INTEGER NOT NULL,
        update_time    INTEGER NOT NULL
    );
    CREATE INDEX payments_by_invoice ON payments (invoice, seq);
    CREATE UNIQUE INDEX payments_one_success_per_invoice ON payments (invoice)
        WHERE state = '{_SUCCEEDED}';
    {LEDGER_SCHEMA}
    """,
]


class PaymentStore(Protocol):
    """What the servicer needs from storage; a PostgreSQL store would implement the same."""

    def create(self, payment: Payment, amount: Decimal, request: CreatePaymentRequest) -> Payment: ...
    def get(self, payment_id: str) -> Payment: ...
    def list(self, after: int, limit: int, invoice: str = "") -> tuple[list[Payment], int | None]: ...
    def refund(self, payment_id: str, request: Message) -> Payment: ...
    def close(self) -> None: ...


def _row_to_payment(row: sqlite3.Row) -> Payment:
    return Payment(
        name=f"payments/{row['id']}",
        invoice=row["invoice"],
        amount=Money(
            currency_code=row["currency_code"], units=row["amount_units"], nanos=row["amount_nanos"]
        ),
        payment_method=row["payment_method"],
        state=row["state"],
        decline_reason=row["decline_reason"],
        create_time=timestamp_from_ns(row["create_time"]),
        update_time=timestamp_from_ns(row["update_time"]),
    )


def _not_found(payment_id: str) -> NotFound:
    return NotFound(
        f"payments/{payment_id} does not exist",
        reason="PAYMENT_NOT_FOUND",
        metadata={"name": f"payments/{payment_id}"},
    )


class SqlitePaymentStore:
    """Payments and the simulated processor's ledger in the payment service's own SQLite file."""

    def __init__(self, db: Database, processor: Processor) -> None:
        self.db = db
        self.processor = processor

    def create(self, payment: Payment, amount: Decimal, request: CreatePaymentRequest) -> Payment:
        def write(tx: sqlite3.Connection) -> Payment:
            paid = tx.execute(
                "SELECT id FROM payments WHERE invoice = ? AND state = ?", (payment.invoice, _SUCCEEDED)
            ).fetchone()
            if paid is not None:
                raise domain.already_paid(payment.invoice, f"payments/{paid['id']}")
            outcome = self.processor.charge(tx, domain.charge_for(payment, amount, request.request_id))
            settled = domain.settled(payment, outcome)
            tx.execute(
                "INSERT INTO payments (id, invoice, currency_code, amount_units, amount_nanos, "
                "payment_method, state, decline_reason, charge_id, create_time, update_time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    settled.name.removeprefix("payments/"),
                    settled.invoice,
                    settled.amount.currency_code,
                    settled.amount.units,
                    settled.amount.nanos,
                    settled.payment_method,
                    PaymentState.Name(settled.state),
                    settled.decline_reason,
                    outcome.charge_id,
                    settled.create_time.ToNanoseconds(),
                    settled.update_time.ToNanoseconds(),
                ),
            )
            return settled

        return self.db.idempotent("CreatePayment", request, Payment, write)

    def get(self, payment_id: str) -> Payment:
        row = self.db.query_one("SELECT * FROM payments WHERE id = ?", (payment_id,))
        if row is None:
            raise _not_found(payment_id)
        return _row_to_payment(row)

    def list(self, after: int, limit: int, invoice: str = "") -> tuple[list[Payment], int | None]:
        where = "seq > ?"
        params: list[Any] = [after]
        if invoice:
            where += " AND invoice = ?"
            params.append(invoice)
        rows = self.db.query(
            f"SELECT * FROM payments WHERE {where} ORDER BY seq LIMIT ?", (*params, limit + 1)
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [_row_to_payment(r) for r in rows], (rows[-1]["seq"] if more else None)

    def refund(self, payment_id: str, request: Message) -> Payment:
        def write(tx: sqlite3.Connection) -> Payment:
            row = tx.execute("SELECT * FROM payments WHERE id = ?", (payment_id,)).fetchone()
            if row is None:
                raise _not_found(payment_id)
            changed = domain.refunded(_row_to_payment(row))
            self.processor.refund(tx, row["charge_id"])
            tx.execute(
                "UPDATE payments SET state = ?, update_time = ? WHERE id = ?",
                (PaymentState.Name(changed.state), changed.update_time.ToNanoseconds(), payment_id),
            )
            return changed

        return self.db.idempotent("RefundPayment", request, Payment, write)

    def close(self) -> None:
        self.db.close()
