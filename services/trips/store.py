"""Where trips and what their steps owe other services are kept: the kit's trips, plus matching, outbox
and locks.

One database holds the `trips` table (MATCHING trips included, hidden from the
kit's reads) and the `outbox`: the notifications of each step, and the driver
to release when a trip ends; a step and its outbox rows are written in one
transaction. Get, List, replays (AIP-155) and reading and writing a trip in a
step are the kit's; what is the trip service's own is here: the MATCHING life
of a trip (its request key and fingerprint), the drop-off time fixed by the
first CompleteTrip attempt, the outbox, and holding a trip across replicas
while a step runs (`hold`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.type.latlng_pb2 import LatLng
from google.type.money_pb2 import Money
from rideshare.trips.v1.trips_pb2 import RequestTripRequest, Trip

from services.runtime.aip import now, timestamp_from_ns
from services.runtime.resources import Backend, Resource, Row, Store, Tx
from services.runtime.tracing import current_traceparent

from .domain import DRIVER_ASSIGNED, IN_PROGRESS, MATCHING, release_request_id
from .notices import Notice

MIGRATIONS = Path(__file__).with_name("migrations")
"""The schema: numbered SQL files, a PostgreSQL variant where the engines differ (runtime/migrations.py)."""


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
class Release:
    """A driver to free from a trip that ended (DriverService.ReleaseTrip), owed by the step that ended it."""

    driver: str
    trip: str


NOTICE, RELEASE = "notice", "release"
"""The kinds of outbox rows; a delivery loop per kind (outbox.py)."""

Item = Notice | Release


@dataclass(frozen=True)
class OutboxEntry:
    """A row written with a trip step and not yet delivered; `id` is its request_id."""

    id: str
    item: Item
    attempts: int
    traceparent: str = ""
    """The W3C trace context of the step that wrote it ("" if none): delivery continues that trace."""


Change = Callable[[Trip], tuple[Trip, Sequence[Item]]]


def _trip(row: Row) -> Trip:
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


def _optional_ns(trip: Trip, field: Literal["start_time", "end_time"]) -> int | None:
    return getattr(trip, field).ToNanoseconds() if trip.HasField(field) else None


def _columns(trip: Trip) -> dict[str, Any]:
    return {
        "passenger": trip.passenger,
        "driver": trip.driver,
        "state": trip.state,
        "pickup_latitude": trip.pickup.latitude,
        "pickup_longitude": trip.pickup.longitude,
        "dropoff_latitude": trip.dropoff.latitude,
        "dropoff_longitude": trip.dropoff.longitude,
        "fare_currency": trip.fare.currency_code,
        "fare_units": trip.fare.units,
        "fare_nanos": trip.fare.nanos,
        "distance_meters": trip.distance_meters,
        "estimated_duration_ns": trip.estimated_duration.ToNanoseconds(),
        "payment_method": trip.payment_method,
        "invoice": trip.invoice,
        "payment": trip.payment,
        "payment_state": trip.payment_state,
        "cancel_reason": trip.cancel_reason,
        "create_time": trip.create_time.ToNanoseconds(),
        "update_time": trip.update_time.ToNanoseconds(),
        "start_time": _optional_ns(trip, "start_time"),
        "end_time": _optional_ns(trip, "end_time"),
    }


TRIPS = Resource(Trip, _trip, _columns, visible=f"state <> {MATCHING}")


def _matching(row: Row) -> Matching:
    return Matching(_trip(row), row["request_key"] or "", row["fingerprint"], row["update_time"])


def _entry(row: Row) -> OutboxEntry:
    item: Item = (
        Release(row["recipient"], row["trip"])
        if row["kind"] == RELEASE
        else Notice(row["recipient"], row["title"], row["body"], row["trip"])
    )
    return OutboxEntry(row["id"], item, row["attempts"], row["traceparent"])


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)


async def _enqueue(tx: Tx, items: Sequence[Item]) -> None:
    """One statement for a step's rows: a notice's id is new, a release's that of its trip's release."""
    if not items:
        return
    stamp, trace = time.time_ns(), current_traceparent()
    rows = [
        (release_request_id(i.trip), RELEASE, i.driver, "", "", i.trip)
        if isinstance(i, Release)
        else (uuid.uuid4().hex, NOTICE, i.recipient, i.title, i.body, i.trip)
        for i in items
    ]
    await tx.execute(
        "INSERT INTO outbox (id, kind, recipient, title, body, trip, create_time, traceparent) VALUES "
        + ", ".join("(?, ?, ?, ?, ?, ?, ?, ?)" for _ in rows),
        [value for row in rows for value in (*row, stamp, trace)],
    )


class TripStore(Store[Trip]):
    """Trips (the kit's Get, List and replays) and the outbox, in the service's own database."""

    def __init__(self, db: Backend) -> None:
        super().__init__(db, TRIPS)

    # --- matching ---------------------------------------------------------------

    async def add_matching(self, trip: Trip, request_key: str, fingerprint: str) -> Matching:
        async with self.db.transaction() as tx:
            await self.insert(tx, trip, request_key=request_key or None, fingerprint=fingerprint)
        return Matching(trip, request_key, fingerprint, trip.create_time.ToNanoseconds())

    async def matching(self, trip_id: str) -> Matching | None:
        row = await self.db.query_one("SELECT * FROM trips WHERE id = ? AND state = ?", (trip_id, MATCHING))
        return None if row is None else _matching(row)

    async def matching_by_key(self, request_key: str) -> Matching | None:
        row = await self.db.query_one(
            "SELECT * FROM trips WHERE request_key = ? AND state = ?", (request_key, MATCHING)
        )
        return None if row is None else _matching(row)

    async def drop_matching(self, trip_id: str, release: Release | None = None) -> None:
        """Forget a MATCHING trip, and queue the release of the driver it may hold (the janitor's)."""
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM trips WHERE id = ? AND state = ?", (trip_id, MATCHING))
            if release is not None:
                await _enqueue(tx, [release])

    async def stale_matching(self, updated_before_ns: int, limit: int) -> list[Matching]:
        rows = await self.db.query(
            "SELECT * FROM trips WHERE state = ? AND update_time < ? ORDER BY update_time LIMIT ?",
            (MATCHING, updated_before_ns, limit),
        )
        return [_matching(r) for r in rows]

    async def finish_matching(
        self,
        matching: Matching,
        driver: str,
        request: RequestTripRequest,
        notices: Callable[[Trip], Sequence[Item]],
    ) -> Trip:
        """MATCHING -> DRIVER_ASSIGNED with its notifications, recorded as the answer to `request`.

        The caller holds the trip (`hold`) and read `matching` while holding it, and holds the
        request's key, under which it found no answer to `request` (`replayed`): nothing else
        writes a held trip or answers a held request, so neither is read again here.
        """

        async def write(tx: Tx) -> Trip:
            trip = Trip()
            trip.CopyFrom(matching.trip)
            trip.driver = driver
            trip.state = DRIVER_ASSIGNED
            trip.update_time.CopyFrom(now())
            await self.save(tx, trip)
            await _enqueue(tx, notices(trip))
            return trip

        return await self.idempotent(request, write, looked_up=True)

    # --- the life of an assigned trip ------------------------------------------

    async def transition(
        self, trip_id: str, request: Message, change: Change, current: Trip | None = None
    ) -> Trip:
        """Read, `change`, write back and queue its outbox rows, in one transaction (AIP-155 too).

        `current`: the trip as the step read it while holding it (`hold`), after finding no answer
        to `request` (`replayed`): nothing else writes a held trip, so neither is read again.
        """

        async def write(tx: Tx) -> Trip:
            trip, owed = change(current if current is not None else await self.read(tx, trip_id))
            await self.save(tx, trip)
            await _enqueue(tx, owed)
            return trip

        return await self.idempotent(request, write, looked_up=current is not None)

    async def fix_dropoff(self, trip_id: str) -> int:
        """The drop-off time of an IN_PROGRESS trip: set by the first CompleteTrip attempt, then fixed."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE trips SET dropoff_time = ? WHERE id = ? AND state = ? AND dropoff_time IS NULL",
                (time.time_ns(), trip_id, IN_PROGRESS),
            )
            row = await tx.query_one("SELECT dropoff_time FROM trips WHERE id = ?", (trip_id,))
        if row is None or row["dropoff_time"] is None:
            raise self.not_found(trip_id)
        dropoff: int = row["dropoff_time"]
        return dropoff

    async def _record(self, trip_id: str, sets: str, params: Sequence[object]) -> Trip:
        async with self.db.transaction() as tx:
            await tx.execute(
                f"UPDATE trips SET {sets}, update_time = ? WHERE id = ? AND state = ?",
                (*params, time.time_ns(), trip_id, IN_PROGRESS),
            )
            return await self.read(tx, trip_id)

    async def record_invoice(self, trip_id: str, invoice: str) -> Trip:
        return await self._record(trip_id, "invoice = ?", (invoice,))

    async def record_payment(self, trip_id: str, payment: str, payment_state: int) -> Trip:
        return await self._record(trip_id, "payment = ?, payment_state = ?", (payment, payment_state))

    # --- outbox -----------------------------------------------------------------

    async def outbox_pending(self, limit: int, kind: str = NOTICE) -> list[OutboxEntry]:
        """What of `kind` waits to be sent, oldest first, whoever has claimed it (operators, tests)."""
        rows = await self.db.query(
            "SELECT * FROM outbox WHERE kind = ? AND dead = 0 ORDER BY seq LIMIT ?", (kind, limit)
        )
        return [_entry(r) for r in rows]

    async def claim_outbox(
        self, owner: str, limit: int, ttl: float, delivered: Sequence[str] = (), kind: str = NOTICE
    ) -> list[OutboxEntry]:
        """Up to `limit` waiting rows of `kind`, oldest first, now `owner`'s to send for `ttl` seconds;
        the rows `owner` has `delivered` since its last claim are deleted first, in the same transaction.

        Rows another replica claimed are passed over (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite
        has one writer at a time) until their claim expires, which is how a crashed replica's rows
        are taken over; rows `owner` still holds (claimed before its database went away, the answer
        lost) are its own to take again at once. A recipient's rows of a kind go out in order: a
        claimed row is given back at once if an earlier row of its kind and recipient is waiting
        and not ours, read after our claim, so it sees (as unclaimed, or claimed by another)
        whatever another replica has in hand. Kinds do not wait for each other: a driver's
        notifications go out while the drivers service, which its release waits for, is away.
        """
        stamp = time.time_ns()
        async with self.db.transaction() as tx:
            if delivered:
                await tx.execute(f"DELETE FROM outbox WHERE id IN ({_marks(delivered)})", delivered)
            claimed = await tx.query(
                "UPDATE outbox SET claimed_by = ?, claim_expires = ? WHERE seq IN ("
                "SELECT seq FROM outbox WHERE kind = ? AND dead = 0 AND (claim_expires < ? OR claimed_by = ?)"
                f" ORDER BY seq LIMIT ?{self.db.skip_locked}) RETURNING *",
                (owner, stamp + int(ttl * 1e9), kind, stamp, owner, limit),
            )
            returned = await tx.query(
                "UPDATE outbox SET claimed_by = '', claim_expires = 0 WHERE claimed_by = ? AND EXISTS ("
                "SELECT 1 FROM outbox AS earlier WHERE earlier.kind = outbox.kind AND"
                " earlier.recipient = outbox.recipient AND earlier.seq < outbox.seq AND earlier.dead = 0"
                " AND earlier.claimed_by <> ?) RETURNING seq",
                (owner, owner),
            )
        given_back = {r["seq"] for r in returned}
        return [_entry(r) for r in sorted(claimed, key=lambda r: r["seq"]) if r["seq"] not in given_back]

    async def end_claims(self, owner: str, delivered: Sequence[str] = ()) -> None:
        """Delete the rows `owner` has `delivered`, and give back every other row it claimed, for
        any replica to send now (one transaction)."""
        async with self.db.transaction() as tx:
            if delivered:
                await tx.execute(f"DELETE FROM outbox WHERE id IN ({_marks(delivered)})", delivered)
            await tx.execute(
                "UPDATE outbox SET claimed_by = '', claim_expires = 0 WHERE claimed_by = ?", (owner,)
            )

    async def outbox_delivered(self, entry_ids: Sequence[str]) -> None:
        """Delete delivered rows at once (one statement, one commit)."""
        if not entry_ids:
            return
        async with self.db.transaction() as tx:
            await tx.execute(f"DELETE FROM outbox WHERE id IN ({_marks(entry_ids)})", entry_ids)

    async def outbox_failed(self, entry_ids: Sequence[str], error: str, *, dead: bool) -> None:
        """Count a failed attempt of each row and give them back (one statement); a dead entry
        (refused for good) is kept for an operator, never retried."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, dead = ?,"
                f" claimed_by = '', claim_expires = 0 WHERE id IN ({_marks(entry_ids)})",
                (error[:1000], 1 if dead else 0, *entry_ids),
            )

    # --- holding a trip (or a request key) across the replicas ------------------

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        """`key` held against every other replica for the block, which runs transactions of its own
        and calls other services in between: the database's lock (`Backend.lock`: PostgreSQL's
        advisory lock, a byte of a lock file next to SQLite's), let go at once if the holder dies."""
        return self.db.lock(key)
