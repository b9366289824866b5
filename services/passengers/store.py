"""Where passengers are kept: the repository interface and its SQLite implementation."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Protocol

from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message
from rideshare.passengers.v1.passengers_pb2 import Passenger

from services.runtime.aip import timestamp_from_ns
from services.runtime.errors import AlreadyExists, NotFound
from services.runtime.storage import Database

MIGRATIONS = [
    """
    CREATE TABLE passengers (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        id           TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        email        TEXT NOT NULL UNIQUE COLLATE NOCASE,
        phone        TEXT NOT NULL,
        create_time  INTEGER NOT NULL,
        update_time  INTEGER NOT NULL
    )
    """,
]


class PassengerStore(Protocol):
    """What the servicer needs from storage; a PostgreSQL store would implement the same."""

    def create(self, passenger: Passenger, request: Message) -> Passenger: ...
    def get(self, passenger_id: str) -> Passenger: ...
    def list(self, after: int, limit: int) -> tuple[list[Passenger], int | None]: ...
    def update(
        self, passenger_id: str, change: Callable[[Passenger], Passenger], request: Message
    ) -> Passenger: ...
    def delete(self, passenger_id: str, request: Message) -> None: ...
    def close(self) -> None: ...


def _row_to_passenger(row: sqlite3.Row) -> Passenger:
    return Passenger(
        name=f"passengers/{row['id']}",
        display_name=row["display_name"],
        email=row["email"],
        phone=row["phone"],
        create_time=timestamp_from_ns(row["create_time"]),
        update_time=timestamp_from_ns(row["update_time"]),
    )


def _not_found(passenger_id: str) -> NotFound:
    return NotFound(
        f"passengers/{passenger_id} does not exist",
        reason="PASSENGER_NOT_FOUND",
        metadata={"name": f"passengers/{passenger_id}"},
    )


def _email_taken(email: str) -> AlreadyExists:
    return AlreadyExists(
        f"a passenger with email {email!r} already exists",
        reason="PASSENGER_EMAIL_TAKEN",
        metadata={"email": email},
    )


class SqlitePassengerStore:
    """Passengers in the service's own SQLite file."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, passenger: Passenger, request: Message) -> Passenger:
        def write(tx: sqlite3.Connection) -> Passenger:
            passenger_id = passenger.name.removeprefix("passengers/")
            ns = passenger.create_time.ToNanoseconds()
            try:
                tx.execute(
                    "INSERT INTO passengers (id, display_name, email, phone, create_time, update_time) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (passenger_id, passenger.display_name, passenger.email, passenger.phone, ns, ns),
                )
            except sqlite3.IntegrityError:
                raise _email_taken(passenger.email) from None
            return passenger

        return self.db.idempotent("CreatePassenger", request, Passenger, write)

    def get(self, passenger_id: str) -> Passenger:
        row = self.db.query_one("SELECT * FROM passengers WHERE id = ?", (passenger_id,))
        if row is None:
            raise _not_found(passenger_id)
        return _row_to_passenger(row)

    def list(self, after: int, limit: int) -> tuple[list[Passenger], int | None]:
        rows = self.db.query(
            "SELECT * FROM passengers WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit + 1)
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [_row_to_passenger(r) for r in rows], (rows[-1]["seq"] if more else None)

    def update(
        self, passenger_id: str, change: Callable[[Passenger], Passenger], request: Message
    ) -> Passenger:
        """Read, `change`, and write back in one transaction."""

        def write(tx: sqlite3.Connection) -> Passenger:
            row = tx.execute("SELECT * FROM passengers WHERE id = ?", (passenger_id,)).fetchone()
            if row is None:
                raise _not_found(passenger_id)
            passenger = change(_row_to_passenger(row))
            try:
                tx.execute(
                    "UPDATE passengers SET display_name = ?, email = ?, phone = ?, update_time = ? "
                    "WHERE id = ?",
                    (
                        passenger.display_name,
                        passenger.email,
                        passenger.phone,
                        passenger.update_time.ToNanoseconds(),
                        passenger_id,
                    ),
                )
            except sqlite3.IntegrityError:
                raise _email_taken(passenger.email) from None
            return passenger

        return self.db.idempotent("UpdatePassenger", request, Passenger, write)

    def delete(self, passenger_id: str, request: Message) -> None:
        def write(tx: sqlite3.Connection) -> Empty:
            cursor = tx.execute("DELETE FROM passengers WHERE id = ?", (passenger_id,))
            if cursor.rowcount == 0:
                raise _not_found(passenger_id)
            return Empty()

        self.db.idempotent("DeletePassenger", request, Empty, write)

    def close(self) -> None:
        self.db.close()
