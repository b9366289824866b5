"""Where payments are kept: their table, the payment as a row of it, and the two steps that move money.

Exactly once: creating a payment runs in ONE transaction that checks the
invoice is not paid yet, charges through the processor (whose ledger is in the
same database), inserts the payment and stores the answer under the
request_id (the kit's `idempotent`). Either all of it commits or none of it
does, so a replay of the request_id, even after a lost answer or a restart,
finds the first payment and charges nothing. A partial unique index keeps an
invoice to one SUCCEEDED payment even if that check were bypassed.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from google.type.money_pb2 import Money
from rideshare.payments.v1.payments_pb2 import (
    CreatePaymentRequest,
    Payment,
    PaymentState,
    RefundPaymentRequest,
)

from services.runtime.aip import timestamp_from_ns
from services.runtime.resources import Backend, Resource, Row, Store, Tx

from . import domain
from .processor import Processor

_SUCCEEDED = PaymentState.Name(PaymentState.PAYMENT_STATE_SUCCEEDED)

MIGRATIONS = Path(__file__).with_name("migrations")
"""The schema: numbered SQL files, a PostgreSQL variant where the engines differ (runtime/migrations.py)."""


def _payment(row: Row) -> Payment:
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


def _columns(payment: Payment) -> dict[str, Any]:
    return {
        "invoice": payment.invoice,
        "currency_code": payment.amount.currency_code,
        "amount_units": payment.amount.units,
        "amount_nanos": payment.amount.nanos,
        "payment_method": payment.payment_method,
        "state": PaymentState.Name(payment.state),
        "decline_reason": payment.decline_reason,
        "create_time": payment.create_time.ToNanoseconds(),
        "update_time": payment.update_time.ToNanoseconds(),
    }


PAYMENTS = Resource(Payment, _payment, _columns)


class PaymentStore(Store[Payment]):
    """The kit's Get and List, and the charge and refund that go through the processor."""

    def __init__(self, db: Backend, processor: Processor) -> None:
        super().__init__(db, PAYMENTS)
        self.processor = processor

    async def pay(self, payment: Payment, amount: Decimal, request: CreatePaymentRequest) -> Payment:
        """Charge once per request: the check, the charge and the payment commit together."""

        async def write(tx: Tx) -> Payment:
            paid = await tx.query_one(
                "SELECT id FROM payments WHERE invoice = ? AND state = ?", (payment.invoice, _SUCCEEDED)
            )
            if paid is not None:
                raise domain.already_paid(payment.invoice, f"payments/{paid['id']}")
            outcome = await self.processor.charge(tx, domain.charge_for(payment, amount, request.request_id))
            settled = domain.settled(payment, outcome)
            await self.insert(tx, settled, charge_id=outcome.charge_id)
            return settled

        return await self.idempotent(request, write)

    async def refund(self, request: RefundPaymentRequest) -> Payment:
        payment_id = self.id_of(request.name)

        async def write(tx: Tx) -> Payment:
            row = await self.fetch(tx, payment_id)
            changed = domain.refunded(_payment(row))
            await self.processor.refund(tx, row["charge_id"])
            await self.save(tx, changed)
            return changed

        return await self.idempotent(request, write)
