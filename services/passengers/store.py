"""Where passengers are kept: their table, and the passenger as a row of it (the kit does the rest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rideshare.passengers.v1.passengers_pb2 import Passenger

from services.runtime.aip import timestamp_from_ns
from services.runtime.errors import AlreadyExists
from services.runtime.resources import Resource, Row

MIGRATIONS = Path(__file__).with_name("migrations")
"""The schema: numbered SQL files, a PostgreSQL variant where the engines differ (runtime/migrations.py)."""


def _passenger(row: Row) -> Passenger:
    return Passenger(
        name=f"passengers/{row['id']}",
        display_name=row["display_name"],
        email=row["email"],
        phone=row["phone"],
        create_time=timestamp_from_ns(row["create_time"]),
        update_time=timestamp_from_ns(row["update_time"]),
    )


def _columns(passenger: Passenger) -> dict[str, Any]:
    return {
        "display_name": passenger.display_name,
        "email": passenger.email,
        "phone": passenger.phone,
        "create_time": passenger.create_time.ToNanoseconds(),
        "update_time": passenger.update_time.ToNanoseconds(),
    }


def _email_taken(passenger: Passenger, holder: Passenger | None) -> AlreadyExists:
    """Emails are unique whatever their case; the holder is not named (it is another person's)."""
    return AlreadyExists(
        f"a passenger with email {passenger.email!r} already exists",
        reason="PASSENGER_EMAIL_TAKEN",
        metadata={"email": passenger.email},
    )


PASSENGERS = Resource(Passenger, _passenger, _columns, unique={"email": _email_taken})
