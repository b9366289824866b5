"""The simulated processor: test cards by token, deduplication by idempotency key, a durable ledger."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.payments.processor import Charge, SimulatedProcessor
from services.payments.store import MIGRATIONS
from services.runtime.storage import Database


@pytest.fixture
def db(tmp_path):
    database = Database(tmp_path / "payments.db", MIGRATIONS)
    yield database
    database.close()


def charge(db: Database, processor: SimulatedProcessor, key: str, method: str = "pm_card_visa"):
    with db.transaction() as tx:
        return processor.charge(tx, Charge(key, method, Decimal("6.97"), "EUR"))


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
    assert processor.attempt_count() == 1
    assert processor.charge_count() == (1 if succeeded else 0)


def test_the_same_idempotency_key_charges_once(db):
    processor = SimulatedProcessor(db)

    first = charge(db, processor, "k1")
    again = charge(db, processor, "k1")

    assert again == first
    assert processor.charge_count() == 1


def test_a_charge_rolled_back_with_its_transaction_never_happened(db):
    processor = SimulatedProcessor(db)

    def crash_before_the_payment_is_recorded() -> None:
        with db.transaction() as tx:
            processor.charge(tx, Charge("k1", "pm_card_visa", Decimal(1), "EUR"))
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        crash_before_the_payment_is_recorded()

    assert processor.attempt_count() == 0


def test_refund_marks_a_successful_charge_once(db):
    processor = SimulatedProcessor(db)
    charged = charge(db, processor, "k1")
    declined = charge(db, processor, "k2", "pm_card_declined")

    for charge_id in (charged.charge_id, charged.charge_id, declined.charge_id):
        with db.transaction() as tx:
            processor.refund(tx, charge_id)

    assert processor.refund_count() == 1


def test_the_ledger_is_durable(tmp_path, db):
    charge(db, SimulatedProcessor(db), "k1")
    db.close()

    reopened = Database(tmp_path / "payments.db", MIGRATIONS)
    try:
        assert SimulatedProcessor(reopened).charge_count() == 1
    finally:
        reopened.close()
