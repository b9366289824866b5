"""Where trips and their unsent notifications are kept: the repository and its SQLite implementation.

One database holds the `trips` table (MATCHING trips included, hidden from
reads) and the `outbox` of notifications; a step and its notifications are
written in one transaction. `replayed()` reads the AIP-155 request log before
an operation calls other services, so a repeat never calls them again.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.type.latlng_pb2 import LatLng
from google.type.money_pb2 import Money
from rideshare.trips.v1.trips_pb2 import Trip

from services.runtime.aip import now, timestamp_from_ns
from services.runtime.errors import NotFound
from services.runtime.storage import Database
from services.runtime.tracing import current_traceparent

from .domain import DRIVER_ASSIGNED, IN_PROGRESS, MATCHING
from .notices import Notice

MIGRATIONS = [
    """
    CREATE TABLE trips (
        seq                   INTEGER PRIMARY KEY AUTOINCREMENT,
        id                    TEXT NOT NULL UNIQUE,
        request_key           TEXT UNIQUE,
        fingerprint           TEXT NOT NULL,
        passenger             TEXT NOT NULL,
        driver                TEXT NOT NULL,
        state                 INTEGER NOT NULL,
        pickup_latitude       REAL NOT NULL,
        pickup_longitude      REAL NOT NULL,
        dropoff_latitude      REAL NOT NULL,
        dropoff_longitude     REAL NOT NULL,
        fare_currency         TEXT NOT NULL,
        fare_units            INTEGER NOT NULL,
        fare_nanos            INTEGER NOT NULL,
        distance_meters       REAL NOT NULL,
        estimated_duration_ns INTEGER NOT NULL,
        payment_method        TEXT NOT NULL,
        invoice               TEXT NOT NULL,
        payment               TEXT NOT NULL,
        payment_state         INTEGER NOT NULL,
        cancel_reason         TEXT NOT NULL,
        create_time           INTEGER NOT NULL,
        update_time           INTEGER NOT NULL,
        start_time            INTEGER,
        end_time              INTEGER,
        dropoff_time          INTEGER
    );
    CREATE INDEX trips_by_passenger ON trips (passenger, seq);
    CREATE INDEX trips_by_driver ON trips (driver, seq);
    CREATE INDEX trips_by_state ON trips (state, update_time);
    CREATE TABLE outbox (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        id          TEXT NOT NULL UNIQUE,
        recipient   TEXT NOT NULL,
        title       TEXT NOT NULL,
        body        TEXT NOT NULL,
        trip        TEXT NOT NULL,
        create_time INTEGER NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT NOT NULL DEFAULT '',
        dead        INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX outbox_by_dead ON outbox (dead, seq)
    """,
    # The trace of the step that wrote a notification, so its delivery joins that trace.
    "ALTER TABLE outbox ADD COLUMN traceparent TEXT NOT NULL DEFAULT ''",
    # Steps on one trip, one at a time across the replicas sharing this file (workflow.KeyedLocks).
    """
    CREATE TABLE step_leases (
        key     TEXT PRIMARY KEY,
        owner   TEXT NOT NULL,
        expires INTEGER NOT NULL
    )
    """,
]


@dataclass(frozen=True)
class Matching:
    """A trip still looking for its driver, with what a retry needs to resume it."""

    trip: Trip
    request_key: str
    fingerprint: str
    update_ns: int

    @property
    def id(self) -> str:
        return self.trip.name.removeprefix("trips/")


@dataclass(frozen=True)
class OutboxEntry:
    """A notification written with a trip step and not yet delivered; `id` is its request_id."""

    id: str
    notice: Notice
    attempts: int
    traceparent: str = ""
    """The W3C trace context of the step that wrote it ("" if none): delivery continues that trace."""


Change = Callable[[Trip], tuple[Trip, Sequence[Notice]]]


class TripStore(Protocol):
    """What the service needs from storage; a PostgreSQL store would implement the same."""

    def replayed(self, method: str, request: Message) -> Trip | None: ...
    def get(self, trip_id: str) -> Trip: ...
    def page(self, passenger: str, driver: str, after: int, limit: int) -> tuple[list[Trip], int | None]: ...
    def add_matching(self, trip: Trip, request_key: str, fingerprint: str) -> Matching: ...
    def matching(self, trip_id: str) -> Matching | None: ...
    def matching_by_key(self, request_key: str) -> Matching | None: ...
    def set_candidate(self, trip_id: str, driver: str) -> None: ...
    def drop_matching(self, trip_id: str) -> None: ...
    def stale_matching(self, updated_before_ns: int, limit: int) -> list[Matching]: ...
    def finish_matching(
        self, trip_id: str, driver: str, request: Message, notices: Callable[[Trip], Sequence[Notice]]
    ) -> Trip: ...
    def transition(self, trip_id: str, method: str, request: Message, change: Change) -> Trip: ...
    def fix_dropoff(self, trip_id: str) -> int: ...
    def record_invoice(self, trip_id: str, invoice: str) -> Trip: ...
    def record_payment(self, trip_id: str, payment: str, payment_state: int) -> Trip: ...
    def pending_notices(self, limit: int) -> list[OutboxEntry]: ...
    def notice_delivered(self, entry_id: str) -> None: ...
    def notice_failed(self, entry_id: str, error: str, *, dead: bool) -> None: ...
    def take_lease(self, key: str, owner: str, ttl: float) -> bool: ...
    def release_lease(self, key: str, owner: str) -> None: ...
    def close(self) -> None: ...


def trip_not_found(trip_id: str) -> NotFound:
    return NotFound(
        f"trips/{trip_id} does not exist", reason="TRIP_NOT_FOUND", metadata={"name": f"trips/{trip_id}"}
    )


def _row_to_trip(row: sqlite3.Row) -> Trip:
    duration = Duration()
    duration.FromNanoseconds(row["estimated_duration_ns"])
    trip = Trip(
        name=f"trips/{row['id']}",
        passenger=row["passenger"],
        driver=row["driver"],
        pickup=LatLng(latitude=row["pickup_latitude"], longitude=row["pickup_longitude"]),
        dropoff=LatLng(latitude=row["dropoff_latitude"], longitude=row["dropoff_longitude"]),
        state=row["state"],
        fare=Money(currency_code=row["fare_currency"], units=row["fare_units"], nanos=row["fare_nanos"]),
        distance_meters=row["distance_meters"],
        estimated_duration=duration,
        payment_method=row["payment_method"],
        invoice=row["invoice"],
        payment=row["payment"],
        payment_state=row["payment_state"],
        cancel_reason=row["cancel_reason"],
        create_time=timestamp_from_ns(row["create_time"]),
        update_time=timestamp_from_ns(row["update_time"]),
    )
    if row["start_time"] is not None:
        trip.start_time.CopyFrom(timestamp_from_ns(row["start_time"]))
    if row["end_time"] is not None:
        trip.end_time.CopyFrom(timestamp_from_ns(row["end_time"]))
    return trip


def _row_to_matching(row: sqlite3.Row) -> Matching:
    return Matching(_row_to_trip(row), row["request_key"] or "", row["fingerprint"], row["update_time"])


def _optional_ns(trip: Trip, field: Literal["start_time", "end_time"]) -> int | None:
    return getattr(trip, field).ToNanoseconds() if trip.HasField(field) else None


def _enqueue(tx: sqlite3.Connection, notices: Sequence[Notice]) -> None:
    stamp = time.time_ns()
    trace = current_traceparent()
    for notice in notices:
        tx.execute(
            "INSERT INTO outbox (id, recipient, title, body, trip, create_time, traceparent)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (uuid.uuid4().hex, notice.recipient, notice.title, notice.body, notice.trip, stamp, trace),
        )


class SqliteTripStore:
    """Trips and the notification outbox in the service's own SQLite file."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def replayed(self, method: str, request: Message) -> Trip | None:
        """The stored answer to this request_id, None if there is none (REQUEST_ID_REUSED if reused)."""
        return self.db.replay(method, request, Trip)

    def get(self, trip_id: str) -> Trip:
        row = self.db.query_one("SELECT * FROM trips WHERE id = ? AND state <> ?", (trip_id, MATCHING))
        if row is None:
            raise trip_not_found(trip_id)
        return _row_to_trip(row)

    def page(self, passenger: str, driver: str, after: int, limit: int) -> tuple[list[Trip], int | None]:
        where: list[str] = ["seq > ?", "state <> ?"]
        params: list[object] = [after, MATCHING]
        if passenger:
            where.append("passenger = ?")
            params.append(passenger)
        if driver:
            where.append("driver = ?")
            params.append(driver)
        rows = self.db.query(
            f"SELECT * FROM trips WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?", (*params, limit + 1)
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [_row_to_trip(r) for r in rows], (rows[-1]["seq"] if more else None)

    # --- matching ---------------------------------------------------------------

    def add_matching(self, trip: Trip, request_key: str, fingerprint: str) -> Matching:
        trip_id = trip.name.removeprefix("trips/")
        ns = trip.create_time.ToNanoseconds()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO trips (id, request_key, fingerprint, passenger, driver, state, "
                "pickup_latitude, pickup_longitude, dropoff_latitude, dropoff_longitude, "
                "fare_currency, fare_units, fare_nanos, distance_meters, estimated_duration_ns, "
                "payment_method, invoice, payment, payment_state, cancel_reason, create_time, update_time) "
                "VALUES (?, ?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', '', ?, '', ?, ?)",
                (
                    trip_id,
                    request_key or None,
                    fingerprint,
                    trip.passenger,
                    MATCHING,
                    trip.pickup.latitude,
                    trip.pickup.longitude,
                    trip.dropoff.latitude,
                    trip.dropoff.longitude,
                    trip.fare.currency_code,
                    trip.fare.units,
                    trip.fare.nanos,
                    trip.distance_meters,
                    trip.estimated_duration.ToNanoseconds(),
                    trip.payment_method,
                    trip.payment_state,
                    ns,
                    ns,
                ),
            )
        return Matching(trip, request_key, fingerprint, ns)

    def matching(self, trip_id: str) -> Matching | None:
        row = self.db.query_one("SELECT * FROM trips WHERE id = ? AND state = ?", (trip_id, MATCHING))
        return None if row is None else _row_to_matching(row)

    def matching_by_key(self, request_key: str) -> Matching | None:
        row = self.db.query_one(
            "SELECT * FROM trips WHERE request_key = ? AND state = ?", (request_key, MATCHING)
        )
        return None if row is None else _row_to_matching(row)

    def set_candidate(self, trip_id: str, driver: str) -> None:
        """Remember which driver is being asked before asking, so a retry or the janitor can find it."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE trips SET driver = ?, update_time = ? WHERE id = ? AND state = ?",
                (driver, time.time_ns(), trip_id, MATCHING),
            )

    def drop_matching(self, trip_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM trips WHERE id = ? AND state = ?", (trip_id, MATCHING))

    def stale_matching(self, updated_before_ns: int, limit: int) -> list[Matching]:
        rows = self.db.query(
            "SELECT * FROM trips WHERE state = ? AND update_time < ? ORDER BY update_time LIMIT ?",
            (MATCHING, updated_before_ns, limit),
        )
        return [_row_to_matching(r) for r in rows]

    def finish_matching(
        self, trip_id: str, driver: str, request: Message, notices: Callable[[Trip], Sequence[Notice]]
    ) -> Trip:
        """MATCHING -> DRIVER_ASSIGNED with its notifications, recorded as the answer to `request`."""

        def write(tx: sqlite3.Connection) -> Trip:
            row = tx.execute("SELECT * FROM trips WHERE id = ? AND state = ?", (trip_id, MATCHING)).fetchone()
            if row is None:
                raise trip_not_found(trip_id)
            trip = _row_to_trip(row)
            trip.driver = driver
            trip.state = DRIVER_ASSIGNED
            trip.update_time.CopyFrom(now())
            self._save(tx, trip)
            _enqueue(tx, notices(trip))
            return trip

        return self.db.idempotent("RequestTrip", request, Trip, write)

    # --- the life of an assigned trip ------------------------------------------

    def _save(self, tx: sqlite3.Connection, trip: Trip) -> None:
        tx.execute(
            "UPDATE trips SET driver = ?, state = ?, invoice = ?, payment = ?, payment_state = ?, "
            "cancel_reason = ?, update_time = ?, start_time = ?, end_time = ? WHERE id = ?",
            (
                trip.driver,
                trip.state,
                trip.invoice,
                trip.payment,
                trip.payment_state,
                trip.cancel_reason,
                trip.update_time.ToNanoseconds(),
                _optional_ns(trip, "start_time"),
                _optional_ns(trip, "end_time"),
                trip.name.removeprefix("trips/"),
            ),
        )

    def _read(self, tx: sqlite3.Connection, trip_id: str) -> Trip:
        row = tx.execute("SELECT * FROM trips WHERE id = ? AND state <> ?", (trip_id, MATCHING)).fetchone()
        if row is None:
            raise trip_not_found(trip_id)
        return _row_to_trip(row)

    def transition(self, trip_id: str, method: str, request: Message, change: Change) -> Trip:
        """Read, `change`, write back and queue its notifications, in one transaction (AIP-155 too)."""

        def write(tx: sqlite3.Connection) -> Trip:
            trip, notices = change(self._read(tx, trip_id))
            self._save(tx, trip)
            _enqueue(tx, notices)
            return trip

        return self.db.idempotent(method, request, Trip, write)

    def fix_dropoff(self, trip_id: str) -> int:
        """The drop-off time of an IN_PROGRESS trip: set by the first CompleteTrip attempt, then fixed."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE trips SET dropoff_time = ? WHERE id = ? AND state = ? AND dropoff_time IS NULL",
                (time.time_ns(), trip_id, IN_PROGRESS),
            )
            row = tx.execute("SELECT dropoff_time FROM trips WHERE id = ?", (trip_id,)).fetchone()
        if row is None or row["dropoff_time"] is None:
            raise trip_not_found(trip_id)
        dropoff: int = row["dropoff_time"]
        return dropoff

    def _record(self, trip_id: str, sets: str, params: Sequence[object]) -> Trip:
        with self.db.transaction() as tx:
            tx.execute(
                f"UPDATE trips SET {sets}, update_time = ? WHERE id = ? AND state = ?",
                (*params, time.time_ns(), trip_id, IN_PROGRESS),
            )
            return self._read(tx, trip_id)

    def record_invoice(self, trip_id: str, invoice: str) -> Trip:
        return self._record(trip_id, "invoice = ?", (invoice,))

    def record_payment(self, trip_id: str, payment: str, payment_state: int) -> Trip:
        return self._record(trip_id, "payment = ?, payment_state = ?", (payment, payment_state))

    # --- outbox -----------------------------------------------------------------

    def pending_notices(self, limit: int) -> list[OutboxEntry]:
        rows = self.db.query("SELECT * FROM outbox WHERE dead = 0 ORDER BY seq LIMIT ?", (limit,))
        return [
            OutboxEntry(
                r["id"],
                Notice(r["recipient"], r["title"], r["body"], r["trip"]),
                r["attempts"],
                r["traceparent"],
            )
            for r in rows
        ]

    def notice_delivered(self, entry_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))

    def notice_failed(self, entry_id: str, error: str, *, dead: bool) -> None:
        """Count a failed attempt; a dead entry (refused for good) is kept for an operator, never retried."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, dead = ? WHERE id = ?",
                (error[:1000], 1 if dead else 0, entry_id),
            )

    def take_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Hold `key` for `ttl` seconds unless another owner holds it unexpired; renews our own."""
        now = time.time_ns()
        with self.db.transaction() as tx:
            cursor = tx.execute(
                "INSERT INTO step_leases (key, owner, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires = excluded.expires "
                "WHERE step_leases.owner = excluded.owner OR step_leases.expires < ?",
                (key, owner, now + int(ttl * 1e9), now),
            )
            return cursor.rowcount == 1

    def release_lease(self, key: str, owner: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM step_leases WHERE key = ? AND owner = ?", (key, owner))

    def close(self) -> None:
        self.db.close()
