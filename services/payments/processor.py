"""The payment processor (PSP): what actually moves money, behind a Protocol a real one can implement.

The simulation decides by payment method token, like a PSP's test cards:
"pm_card_visa" succeeds, "pm_card_declined" is declined ("card_declined"), any
other token is declined ("unsupported_payment_method"). Its ledger of charges
(`processor_charges`, created by the payment migrations) lives in the payment
service's own database and is written inside the
transaction that records the payment and its request-log entry, so a charge
exists exactly when its payment does: a crash before the commit leaves
neither, and the retry charges once. The ledger also makes the number of
charges durable, which is how tests prove "charged exactly once" across
replays and restarts.

Like real PSPs (Stripe's `Idempotency-Key`, Adyen's `idempotencyKey`), the
processor deduplicates by an idempotency key: a second charge with the same key
returns the first outcome and moves no money. The payment service passes the
request's `request_id` (the payment's name when there is none).

A real, remote PSP cannot join our transaction, and a network call must never
run inside one. Replacing the simulation therefore also changes the payment
store into two steps: (1) commit a PENDING payment under the request_id;
(2) outside any transaction, call the PSP with idempotency key = request_id;
(3) commit the outcome. A crash or lost answer between (1) and (3) is repaired
by calling the PSP again with the same key (on the client's retry or by a
sweeper over PENDING payments): the PSP's deduplication makes that a lookup,
not a second charge. Such a PSP ignores the `tx` argument below.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from services.domain import money
from services.runtime.aip import new_id
from services.runtime.resources import Backend, Tx

#: Always succeeds.
CARD_VISA = "pm_card_visa"
#: Always declined with "card_declined".
CARD_DECLINED = "pm_card_declined"

CARD_DECLINED_REASON = "card_declined"
UNSUPPORTED_REASON = "unsupported_payment_method"


@dataclass(frozen=True)
class Charge:
    """What to charge, and the key that makes asking twice harmless."""

    idempotency_key: str
    payment_method: str
    amount: Decimal
    currency_code: str


@dataclass(frozen=True)
class Outcome:
    """What the processor did: a charge id to refund later, and whether money moved."""

    charge_id: str
    succeeded: bool
    decline_reason: str = ""


class Processor(Protocol):
    """A payment service provider as the payment service uses it.

    `tx` is the open transaction recording the payment: an in-process
    processor writes its ledger into it; a remote one ignores it (see the
    module docstring for what the store must do then).
    """

    async def charge(self, tx: Tx, charge: Charge) -> Outcome:
        """Charge once per idempotency key; a repeat returns the first outcome."""
        ...

    async def refund(self, tx: Tx, charge_id: str) -> None:
        """Give a successful charge back in full; refunding a refunded charge does nothing."""
        ...


class SimulatedProcessor:
    """Test cards by token, a durable ledger in the payment database, deduplication by key."""

    def __init__(self, db: Backend) -> None:
        """`db` is the payment database: counts are read from it, charges written through each `tx`."""
        self._db = db

    async def charge(self, tx: Tx, charge: Charge) -> Outcome:
        previous = await tx.query_one(
            "SELECT id, succeeded, decline_reason FROM processor_charges WHERE idempotency_key = ?",
            (charge.idempotency_key,),
        )
        if previous is not None:
            return Outcome(previous["id"], bool(previous["succeeded"]), previous["decline_reason"])
        decline_reason = _decline_reason(charge.payment_method)
        outcome = Outcome(f"ch_{new_id()}", succeeded=not decline_reason, decline_reason=decline_reason)
        amount = money.to_money(charge.amount, charge.currency_code)
        await tx.execute(
            "INSERT INTO processor_charges (id, idempotency_key, payment_method, currency_code, "
            "amount_units, amount_nanos, succeeded, decline_reason, refunded, create_time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (
                outcome.charge_id,
                charge.idempotency_key,
                charge.payment_method,
                amount.currency_code,
                amount.units,
                amount.nanos,
                int(outcome.succeeded),
                decline_reason,
                time.time_ns(),
            ),
        )
        return outcome

    async def refund(self, tx: Tx, charge_id: str) -> None:
        await tx.execute(
            "UPDATE processor_charges SET refunded = 1 WHERE id = ? AND succeeded = 1", (charge_id,)
        )

    async def charge_count(self) -> int:
        """How many times money moved to us: successful charges, each key counted once."""
        return await self._count("succeeded = 1")

    async def attempt_count(self) -> int:
        """Every charge the processor decided, declines included."""
        return await self._count("1 = 1")

    async def refund_count(self) -> int:
        return await self._count("refunded = 1")

    async def _count(self, condition: str) -> int:
        row = await self._db.query_one(f"SELECT COUNT(*) AS n FROM processor_charges WHERE {condition}")
        return int(row["n"]) if row is not None else 0


def _decline_reason(payment_method: str) -> str:
    if payment_method == CARD_VISA:
        return ""
    if payment_method == CARD_DECLINED:
        return CARD_DECLINED_REASON
    return UNSUPPORTED_REASON
