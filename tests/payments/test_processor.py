"""The simulated processor: test cards by token, deduplication by key, a durable ledger (both engines)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TypeVar

import pytest

from services.payments.processor import Charge, Outcome, SimulatedProcessor
from services.payments.store import MIGRATIONS
from services.runtime.resources import Backend
from tests.postgres import Backends

T = TypeVar("T")


@pytest.fixture
def db(backends: Backends) -> Backend:
    """The payment database, once per engine."""
    return backends.open(MIGRATIONS)


@pytest.fixture
def run(backends: Backends) -> Callable[[Awaitable[T]], T]:
    """Runs a coroutine on the test's loop (a PostgreSQL pool belongs to one loop)."""
    return backends.runner.run


def charge(run, db: Backend, processor: SimulatedProcessor, key: str, method: str = "pm_card_visa"):
    async def once() -> Outcome:
        async with db.transaction() as tx:
            return await processor.charge(tx, Charge(key, method, Decimal("6.97"), "EUR"))

    return run(once())


def count(run, processor: SimulatedProcessor, what: str) -> int:
    return run(getattr(processor, what)())


@pytest.mark.parametrize(
    ("method", "succeeded", "reason"),
    [
        ("pm_card_visa", True, ""),
        ("pm_card_declined", False, "card_declined"),
        ("pm_card_mastercard", False, "unsupported_payment_method"),
        ("PM_CARD_VISA", False, "unsupported_payment_method"),
    ],
)
def test_the_outcome_depends_on_the_payment_method(db, run, method, succeeded, reason):
    processor = SimulatedProcessor(db)

    outcome = charge(run, db, processor, "k1", method)

    assert (outcome.succeeded, outcome.decline_reason) == (succeeded, reason)
    assert outcome.charge_id.startswith("ch_")
    assert count(run, processor, "attempt_count") == 1
    assert count(run, processor, "charge_count") == (1 if succeeded else 0)


def test_the_same_idempotency_key_charges_once(db, run):
    processor = SimulatedProcessor(db)

    first = charge(run, db, processor, "k1")
    again = charge(run, db, processor, "k1")

    assert again == first
    assert count(run, processor, "charge_count") == 1


def test_a_charge_rolled_back_with_its_transaction_never_happened(db, run):
    processor = SimulatedProcessor(db)

    async def crash_before_the_payment_is_recorded() -> None:
        async with db.transaction() as tx:
            await processor.charge(tx, Charge("k1", "pm_card_visa", Decimal(1), "EUR"))
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        run(crash_before_the_payment_is_recorded())

    assert count(run, processor, "attempt_count") == 0


def test_refund_marks_a_successful_charge_once(db, run):
    processor = SimulatedProcessor(db)
    charged = charge(run, db, processor, "k1")
    declined = charge(run, db, processor, "k2", "pm_card_declined")

    async def refund(charge_id: str) -> None:
        async with db.transaction() as tx:
            await processor.refund(tx, charge_id)

    for charge_id in (charged.charge_id, charged.charge_id, declined.charge_id):
        run(refund(charge_id))

    assert count(run, processor, "refund_count") == 1


def test_the_ledger_is_durable(backends, db, run):
    charge(run, db, SimulatedProcessor(db), "k1")
    run(db.close())

    reopened = backends.open(MIGRATIONS)
    assert count(run, SimulatedProcessor(reopened), "charge_count") == 1
