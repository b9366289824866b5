"""Where drivers are kept: their table, the driver as a row of it, the nearby search, and matching.

Status changes go through the kit's `update`: it reads the row, applies a rule
from `domain`, and writes the result inside one transaction (SQLite takes the
write lock before the read, `BEGIN IMMEDIATE`, and no `await` happens in
between). On PostgreSQL the kit reads the row `FOR UPDATE` to the same effect.
Matching (`assign_nearest`) searches and takes the nearest driver in one
transaction: on SQLite nothing can take it in between; on PostgreSQL, where
replicas write side by side, it takes a driver only if it is still AVAILABLE
(a conditional UPDATE) and otherwise tries the next.

Search looks in widening windows of grid cells around the point (geo.py),
one query each on the index `(status, cell)`: the database orders the rows
of the window by a flat distance estimate and returns only the first few, and
exact great-circle distances are computed for those alone. It stops once the
window or the estimate proves that no driver left out is nearer than the ones
kept, so its cost follows the drivers near the point that it returns, not all
those around it. The SQL is plain (ranges, arithmetic, CASE, ORDER BY ...
LIMIT) and runs unchanged on PostgreSQL.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from google.type.latlng_pb2 import LatLng
from rideshare.drivers.v1.drivers_pb2 import (
    DRIVER_STATUS_AVAILABLE,
    DRIVER_STATUS_ON_TRIP,
    Driver,
    ReleaseTripRequest,
    Vehicle,
)

from services.domain import geo
from services.runtime.aip import apply_read_mask, now, timestamp_from_ns
from services.runtime.errors import AlreadyExists, FailedPrecondition, MeshError
from services.runtime.resources import (
    Backend,
    BatchLog,
    Resource,
    Row,
    Store,
    method_of,
)

from . import domain

MIGRATIONS = Path(__file__).with_name("migrations")
"""The schema: numbered SQL files, a PostgreSQL variant where the engines differ (runtime/migrations.py)."""


Nearby = list[tuple[Driver, float]]
"""Drivers with their distance in meters from a searched point, nearest first."""


def _driver(row: Row) -> Driver:
    driver = Driver(
        name=f"drivers/{row['id']}",
        display_name=row["display_name"],
        vehicle=Vehicle(
            make=row["vehicle_make"], model=row["vehicle_model"], license_plate=row["license_plate"]
        ),
        status=row["status"],
        offline_after_trip=bool(row["offline_after_trip"]),
        current_trip=row["current_trip"],
        email=row["email"],
        create_time=timestamp_from_ns(row["create_time"]),
        update_time=timestamp_from_ns(row["update_time"]),
    )
    if row["latitude"] is not None:
        driver.location.CopyFrom(LatLng(latitude=row["latitude"], longitude=row["longitude"]))
        driver.location_update_time.CopyFrom(timestamp_from_ns(row["location_update_time"]))
    return driver


def _columns(driver: Driver) -> dict[str, Any]:
    located = driver.HasField("location")
    return {
        "display_name": driver.display_name,
        "vehicle_make": driver.vehicle.make,
        "vehicle_model": driver.vehicle.model,
        "license_plate": driver.vehicle.license_plate,
        "status": int(driver.status),
        "offline_after_trip": int(driver.offline_after_trip),
        "latitude": driver.location.latitude if located else None,
        "longitude": driver.location.longitude if located else None,
        "cell": geo.cell_of(driver.location.latitude, driver.location.longitude) if located else None,
        "current_trip": driver.current_trip,
        "email": driver.email,
        "location_update_time": driver.location_update_time.ToNanoseconds() if located else None,
        "create_time": driver.create_time.ToNanoseconds(),
        "update_time": driver.update_time.ToNanoseconds(),
    }


def _email_taken(driver: Driver, holder: Driver | None) -> AlreadyExists:
    """Emails are unique whatever their case; the holder is not named (it is another person's)."""
    return AlreadyExists(
        f"a driver with email {driver.email!r} already exists",
        reason="DRIVER_EMAIL_TAKEN",
        metadata={"email": driver.email},
    )


DRIVERS = Resource(Driver, _driver, _columns, unique={"email": _email_taken})


AVAILABLE, ON_TRIP = int(DRIVER_STATUS_AVAILABLE), int(DRIVER_STATUS_ON_TRIP)

#: The first window's reach: a few cells each way, which holds the nearest drivers in a busy area.
FIRST_REACH = 250.0

#: The drivers of some cells by flat squared distance in degrees (`gap`) from a point: the latitude
#: offset squared plus the longitude offset the shorter way round (`east`), squared and scaled by
#: cos^2 of the point's latitude.
_NEAREST = """
SELECT * FROM (
    SELECT *, dlat * dlat + ? * east * east AS gap FROM (
        SELECT *, CASE WHEN dlng > 180 THEN dlng - 360 WHEN dlng < -180 THEN dlng + 360 ELSE dlng END AS east
        FROM (
            SELECT *, latitude - ? AS dlat, longitude - ? AS dlng FROM drivers WHERE {cells}
        ) AS offsets
    ) AS wrapped
) AS gaps
WHERE gap <= ? ORDER BY gap, seq LIMIT ?
"""


def search_query(
    center: LatLng, window: geo.CellWindow, radius_meters: float, limit: int
) -> tuple[str, tuple[float, ...]]:
    """The `limit` AVAILABLE drivers in the window's cells nearest `center` by flat distance (`gap`),
    leaving out those the flat distance already puts beyond the radius."""
    # Each range with its status, so that SQLite searches the index once per range (PostgreSQL ORs
    # bitmap index scans either way); `status = ? AND (ranges)` made SQLite scan every AVAILABLE driver.
    cells = " OR ".join("(status = ? AND cell BETWEEN ? AND ?)" for _ in window.ranges)
    widest = radius_meters * window.stretch / geo.METERS_PER_DEGREE
    return (
        _NEAREST.format(cells=cells),
        (
            math.cos(math.radians(center.latitude)) ** 2,
            center.latitude,
            center.longitude,
            *(value for low, high in window.ranges for value in (AVAILABLE, low, high)),
            min(widest * widest, _ANYWHERE),
            limit,
        ),
    )


#: Larger than any gap on Earth (180^2 + 180^2), for a window whose stretch is unbounded (a pole).
_ANYWHERE = 1e6


Query = Callable[[str, Sequence[Any]], Awaitable[list[Row]]]
"""A read: the backend's own (a search) or an open transaction's (a match)."""

#: The drivers a round of matching tries, nearest first. On SQLite the first always wins (the
#: transaction is the only writer); on PostgreSQL another replica may take some of them meanwhile.
CANDIDATES = 3
#: Rounds of search one match makes at most, each after another replica took every candidate of the
#: previous one: a bound on a runaway loop, far past any real contention.
MAX_ROUNDS = 10

#: The driver on a trip, by the partial unique index drivers_current_trip_key (its condition spelled
#: out, so both engines see that the index holds every row the query wants).
_ON_TRIP_FOR = "SELECT * FROM drivers WHERE current_trip = ? AND current_trip <> ''"
#: Takes a driver for a trip if it is still AVAILABLE: on PostgreSQL a replica that took it meanwhile
#: holds the row, and once that one commits the condition is checked again on the new row (0 rows).
_TAKE = (
    "UPDATE drivers SET status = ?, current_trip = ?, update_time = ? WHERE id = ? AND status = ? RETURNING *"
)


class DriverStore(Store[Driver]):
    """The kit's standard methods, plus the search for AVAILABLE drivers near a point and matching."""

    def __init__(self, db: Backend) -> None:
        super().__init__(db, DRIVERS)

    async def search(
        self, center: LatLng, radius_meters: float, limit: int, fields: frozenset[str] = frozenset()
    ) -> Nearby:
        """The AVAILABLE drivers within the radius, nearest first (ties by registration order),
        with only the `fields` named (aip.read_mask_paths; empty: every field)."""
        found = await _nearest(self.db.query, center, radius_meters, limit)
        build = _masked(fields)
        return [(build(row), distance) for distance, _, row in found]

    async def assign_nearest(self, trip: str, pickup: LatLng, radius_meters: float) -> Driver:
        """The driver ON_TRIP for `trip`: the one it already has, else the nearest AVAILABLE within
        the radius, taken in the same transaction; NO_DRIVER_AVAILABLE if there is none.

        Idempotent by the trip, so a repeat needs no request log: a trip has one
        driver at most (a unique index). Should two calls for one trip overlap on
        PostgreSQL, the second to commit hits that index and returns the first's.
        """
        try:
            async with self.db.transaction() as tx:
                held = await tx.query_one(_ON_TRIP_FOR, (trip,))
                if held is not None:
                    return _driver(held)
                for _ in range(MAX_ROUNDS):
                    found = await _nearest(tx.query, pickup, radius_meters, CANDIDATES)
                    if not found:
                        break
                    for _, _, row in found:
                        taken = await tx.query(
                            _TAKE,
                            (ON_TRIP, trip, now().ToNanoseconds(), row["id"], AVAILABLE),
                        )
                        if taken:
                            return _driver(taken[0])
                raise domain.no_driver_available(pickup)
        except Exception as error:
            if self.db.unique_violation(error) != "current_trip":
                raise
            held = await self.db.query_one(_ON_TRIP_FOR, (trip,))
            if held is None:
                raise
            return _driver(held)

    async def release_batch(self, requests: Sequence[ReleaseTripRequest]) -> list[Driver]:
        """Each release as ReleaseTrip makes it, in order, all in one transaction (AIP-233): the
        drivers as each entry left them, or the first answer of an entry answered before (alone, in
        an earlier batch, or earlier in this one: the same request_id means the same as ReleaseTrip's).

        An entry refused (no such driver, another trip) refuses the batch, named by its index. The
        batch's drivers are locked first, in one read and in id order (`read_many`), and only then
        is the request log read: a repeat of an entry releases the same driver, so it waits for this
        transaction and then finds its answer, and two batches never deadlock. The same driver
        twice sees the earlier entry's release; each changed driver is written once, at the end.
        """
        try:
            return await self._release_batch(requests)
        except Exception as error:
            if self.db.unique_violation(error) != "request_id":
                raise
            # On PostgreSQL, another request logged one of the request_ids between our read of the
            # log and our write (a repeat of the same entry cannot: it waits for the driver). Read
            # again, after the rollback: the log now has it, and says REQUEST_ID_REUSED on its entry.
            return await self._release_batch(requests)

    async def _release_batch(self, requests: Sequence[ReleaseTripRequest]) -> list[Driver]:
        # An entry and a lone ReleaseTrip replay each other: one method in the log.
        log = BatchLog(method_of(ReleaseTripRequest()), requests, Driver)
        ids = [self.id_of(request.name, f"requests[{index}].name") for index, request in enumerate(requests)]
        answers: list[Driver] = []
        async with self.db.transaction() as tx:
            read = await self.read_many(tx, ids)
            drivers = dict(read)
            await log.read(tx)
            for index, (request, driver_id) in enumerate(zip(requests, ids, strict=True)):
                first = log.first(index)
                if first is not None:
                    answers.append(first)
                    continue
                if driver_id not in drivers:
                    raise _entry(self.not_found(driver_id), f"requests[{index}].name")
                try:
                    drivers[driver_id] = domain.release_trip(drivers[driver_id], request.trip)
                except FailedPrecondition as refused:
                    raise _entry(refused, f"requests[{index}].trip") from None
                log.answered(index, drivers[driver_id])
                answers.append(drivers[driver_id])
            for driver_id, driver in drivers.items():
                if driver is not read[driver_id] and driver != read[driver_id]:
                    await self.save(tx, driver)
            await log.write(tx)
        return answers


def _entry(error: MeshError, field: str) -> MeshError:
    """`error`, refusing a batch's entry, naming it: the message starts with the entry's field
    (`requests[3].trip: ...`), and metadata `field` holds it, for a caller to tell which entry."""
    return type(error)(
        f"{field}: {error.message}", reason=error.reason, metadata={**error.metadata, "field": field}
    )


async def _nearest(
    query: Query, center: LatLng, radius_meters: float, limit: int
) -> list[tuple[float, int, Row]]:
    """(meters, seq, row) of the `limit` AVAILABLE drivers nearest `center` within the radius, nearest
    first, then by registration order.

    Each round asks for the `fetch` nearest by flat distance in a window and
    measures them exactly. A driver not returned is at least `horizon` away:
    outside the window it is beyond the window's reach; inside, beyond the last
    flat distance returned (divided by the window's stretch). The drivers closer
    than that are certain; once there are `limit` of them, or the window covers
    the radius and nothing in it was left out, the answer is exact. Otherwise
    the round that was short of proof grows: `fetch` when the estimate stopped
    it, the window (by the density it saw) when the window did.
    """
    reach, fetch = min(FIRST_REACH, radius_meters), 2 * limit
    while True:
        window = geo.cell_window(center, reach)
        rows = await query(*search_query(center, window, radius_meters, fetch))
        found = _measured(center, rows, radius_meters)
        complete = len(rows) < fetch
        estimated = math.inf if complete else geo.flat_meters(rows[-1]["gap"]) / window.stretch
        horizon = min(reach, estimated)
        certain = [item for item in found if item[0] < horizon]
        if len(certain) >= limit or (reach >= radius_meters and estimated > radius_meters):
            return found[:limit]
        if reach >= radius_meters or estimated < reach:
            fetch *= 2
        else:
            grow = 4.0 if not rows else min(4.0, max(1.5, 1.25 * math.sqrt(limit / len(rows))))
            reach = min(radius_meters, reach * grow)


def _named(row: Row) -> Driver:
    return Driver(name=f"drivers/{row['id']}")


def _masked(fields: frozenset[str]) -> Callable[[Row], Driver]:
    """How to make a driver of a row with only `fields`: the name alone straight from the row,
    others by trimming the whole driver."""
    if not fields:
        return _driver
    if fields == {"name"}:
        return _named
    return lambda row: apply_read_mask(_driver(row), fields)


def _measured(center: LatLng, rows: list[Row], radius_meters: float) -> list[tuple[float, int, Row]]:
    """(great-circle meters, seq, row) of the rows within the radius, nearest first (then by seq)."""
    found = []
    for row in rows:
        meters = geo.haversine_meters(center.latitude, center.longitude, row["latitude"], row["longitude"])
        if meters <= radius_meters:
            found.append((meters, row["seq"], row))
    found.sort(key=lambda item: (item[0], item[1]))
    return found
