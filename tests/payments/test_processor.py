"""The simulated processor: test cards by token, deduplication by idempotency key, a durable ledger."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from services.payments.processor import Charge, Outcome, SimulatedProcessor
from services.payments.store import MIGRATIONS
from services.runtime.storage import SqliteBackend


@pytest.fixture
def db(tmp_path):
    database = SqliteBackend(tmp_path / "payments.db", MIGRATIONS)
    yield database
    asyncio.run(database.close())


def charge(db: SqliteBackend, processor: SimulatedProcessor, key: str, method: str = "pm_card_visa"):
    async def once() -> Outcome:
        async with db.transaction() as tx:
            return await processor.charge(tx, Charge(key, method, Decimal("6.97"), "EUR"))

    return asyncio.run(once())


def count(processor: SimulatedProcessor, what: str) -> int:
    return asyncio.run(getattr(processor, what)())


@pytest.mark.parametrize(
    ("method", "succeeded", "reason"),
    [
        ("pm_card_visa", True, ""),
        ("pm_card_declined", False, "card_declined"),
        ("pm_card_mastercard", False, "unsupported_payment_method"),
        ("PM_CARD_VISA", False, "unsupported_payment_method"),
    ],
)
def test_the_outcome_depends_on_the_payment_method(db, method, succeeded, reason):
    processor = SimulatedProcessor(db)

    outcome = charge(db, processor, "k1", method)

    assert (outcome.succeeded, outcome.decline_reason) == (succeeded, reason)
    assert outcome.charge_id.startswith("ch_")
    assert count(processor, "attempt_count") == 1
    assert count(processor, "charge_count") == (1 if succeeded else 0)


def test_the_same_idempotency_key_charges_once(db):
    processor = SimulatedProcessor(db)

    first = charge(db, processor, "k1")
    again = charge(db, processor, "k1")

    assert again == first
    assert count(processor, "charge_count") == 1


def test_a_charge_rolled_back_with_its_transaction_never_happened(db):
    processor = SimulatedProcessor(db)

    async def crash_before_the_payment_is_recorded() -> None:
        async with db.transaction() as tx:
            await processor.charge(tx, Charge("k1", "pm_card_visa", Decimal(1), "EUR"))
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        asyncio.run(crash_before_the_payment_is_recorded())

    assert count(processor, "attempt_count") == 0


def test_refund_marks_a_successful_charge_once(db):
    processor = SimulatedProcessor(db)
    charged = charge(db, processor, "k1")
    declined = charge(db, processor, "k2", "pm_card_declined")

    async def refund(charge_id: str) -> None:
        async with db.transaction() as tx:
            await processor.refund(tx, charge_id)

    for charge_id in (charged.charge_id, charged.charge_id, declined.charge_id):
        asyncio.run(refund(charge_id))

    assert count(processor, "refund_count") == 1


def test_the_ledger_is_durable(tmp_path, db):
    charge(db, SimulatedProcessor(db), "k1")
    asyncio.run(db.close())

    reopened = SqliteBackend(tmp_path / "payments.db", MIGRATIONS)
    try:
        assert count(SimulatedProcessor(reopened), "charge_count") == 1
    finally:
        asyncio.run(reopened.close())
