"""Where drivers are kept: the repository interface and its SQLite implementation.

Status changes are check-and-set: `change` reads the row, applies a rule from
`domain`, and writes the result inside one `BEGIN IMMEDIATE` transaction (the
write lock is taken before the read, and no `await` happens in between), so
two trips racing for one driver are serialized and the second sees ON_TRIP.
A PostgreSQL store would read with `SELECT ... FOR UPDATE` to the same effect.

Search prefilters with a latitude/longitude box on the index
`(status, latitude, longitude)`; exact great-circle distances are computed
only for the rows inside the box.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Protocol

from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message
from google.type.latlng_pb2 import LatLng
from rideshare.drivers.v1.drivers_pb2 import DRIVER_STATUS_AVAILABLE, Driver, Vehicle

from services.domain import geo
from services.runtime.aip import timestamp_from_ns
from services.runtime.errors import NotFound
from services.runtime.storage import Database

MIGRATIONS = [
    """
    CREATE TABLE drivers (
        seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
        id                   TEXT NOT NULL UNIQUE,
        display_name         TEXT NOT NULL,
        vehicle_make         TEXT NOT NULL,
        vehicle_model        TEXT NOT NULL,
        license_plate        TEXT NOT NULL,
        status               INTEGER NOT NULL,
        latitude             REAL,
        longitude            REAL,
        current_trip         TEXT NOT NULL DEFAULT '',
        location_update_time INTEGER,
        create_time          INTEGER NOT NULL,
        update_time          INTEGER NOT NULL
    );
    CREATE INDEX drivers_by_status_position ON drivers (status, latitude, longitude)
    """,
]

Change = Callable[[Driver], Driver]
Nearby = list[tuple[Driver, float]]
"""Drivers with their distance in meters from a searched point, nearest first."""


class DriverStore(Protocol):
    """What the servicer needs from storage; a PostgreSQL store would implement the same."""

    def create(self, driver: Driver, request: Message) -> Driver: ...
    def get(self, driver_id: str) -> Driver: ...
    def list(self, after: int, limit: int) -> tuple[list[Driver], int | None]: ...
    def change(self, driver_id: str, change: Change, method: str, request: Message) -> Driver: ...
    def delete(self, driver_id: str, check: Callable[[Driver], None], request: Message) -> None: ...
    def search(self, center: LatLng, radius_meters: float, limit: int) -> Nearby: ...
    def close(self) -> None: ...


def _row_to_driver(row: sqlite3.Row) -> Driver:
    driver = Driver(
        name=f"drivers/{row['id']}",
        display_name=row["display_name"],
        vehicle=Vehicle(
            make=row["vehicle_make"], model=row["vehicle_model"], license_plate=row["license_plate"]
        ),
        status=row["status"],
        current_trip=row["current_trip"],
        create_time=timestamp_from_ns(row["create_time"]),
        update_time=timestamp_from_ns(row["update_time"]),
    )
    if row["latitude"] is not None:
        driver.location.CopyFrom(LatLng(latitude=row["latitude"], longitude=row["longitude"]))
        driver.location_update_time.CopyFrom(timestamp_from_ns(row["location_update_time"]))
    return driver


def _columns(driver: Driver) -> dict[str, object]:
    located = driver.HasField("location")
    return {
        "display_name": driver.display_name,
        "vehicle_make": driver.vehicle.make,
        "vehicle_model": driver.vehicle.model,
        "license_plate": driver.vehicle.license_plate,
        "status": int(driver.status),
        "latitude": driver.location.latitude if located else None,
        "longitude": driver.location.longitude if located else None,
        "current_trip": driver.current_trip,
        "location_update_time": driver.location_update_time.ToNanoseconds() if located else None,
        "update_time": driver.update_time.ToNanoseconds(),
    }


def _not_found(driver_id: str) -> NotFound:
    return NotFound(
        f"drivers/{driver_id} does not exist",
        reason="DRIVER_NOT_FOUND",
        metadata={"name": f"drivers/{driver_id}"},
    )


def _read(tx: sqlite3.Connection, driver_id: str) -> Driver:
    row = tx.execute("SELECT * FROM drivers WHERE id = ?", (driver_id,)).fetchone()
    if row is None:
        raise _not_found(driver_id)
    return _row_to_driver(row)


def search_query(box: geo.BoundingBox) -> tuple[str, tuple[float, ...]]:
    """The AVAILABLE drivers inside `box`: a range scan of `drivers_by_status_position`."""
    longitudes = " OR ".join("longitude BETWEEN ? AND ?" for _ in box.longitude_ranges)
    return (
        f"SELECT * FROM drivers WHERE status = ? AND latitude BETWEEN ? AND ? AND ({longitudes})",
        (
            int(DRIVER_STATUS_AVAILABLE),
            box.min_latitude,
            box.max_latitude,
            *(bound for pair in box.longitude_ranges for bound in pair),
        ),
    )


class SqliteDriverStore:
    """Drivers in the service's own SQLite file."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, driver: Driver, request: Message) -> Driver:
        def write(tx: sqlite3.Connection) -> Driver:
            values = _columns(driver)
            values["id"] = driver.name.removeprefix("drivers/")
            values["create_time"] = driver.create_time.ToNanoseconds()
            names = ", ".join(values)
            tx.execute(
                f"INSERT INTO drivers ({names}) VALUES ({', '.join('?' for _ in values)})",
                tuple(values.values()),
            )
            return driver

        return self.db.idempotent("CreateDriver", request, Driver, write)

    def get(self, driver_id: str) -> Driver:
        row = self.db.query_one("SELECT * FROM drivers WHERE id = ?", (driver_id,))
        if row is None:
            raise _not_found(driver_id)
        return _row_to_driver(row)

    def list(self, after: int, limit: int) -> tuple[list[Driver], int | None]:
        rows = self.db.query("SELECT * FROM drivers WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return [_row_to_driver(r) for r in rows], (rows[-1]["seq"] if more else None)

    def change(self, driver_id: str, change: Change, method: str, request: Message) -> Driver:
        """Read, `change`, and write back in one transaction; an unchanged driver is not written."""

        def write(tx: sqlite3.Connection) -> Driver:
            current = _read(tx, driver_id)
            driver = change(current)
            if driver is not current and driver != current:
                values = _columns(driver)
                assignments = ", ".join(f"{column} = ?" for column in values)
                tx.execute(f"UPDATE drivers SET {assignments} WHERE id = ?", (*values.values(), driver_id))
            return driver

        return self.db.idempotent(method, request, Driver, write)

    def delete(self, driver_id: str, check: Callable[[Driver], None], request: Message) -> None:
        def write(tx: sqlite3.Connection) -> Empty:
            check(_read(tx, driver_id))
            tx.execute("DELETE FROM drivers WHERE id = ?", (driver_id,))
            return Empty()

        self.db.idempotent("DeleteDriver", request, Empty, write)

    def search(self, center: LatLng, radius_meters: float, limit: int) -> Nearby:
        """The AVAILABLE drivers within the radius, nearest first (ties by registration order)."""
        rows = self.db.query(*search_query(geo.bounding_box(center, radius_meters)))
        found = []
        for row in rows:
            distance = geo.haversine_meters(
                center.latitude, center.longitude, row["latitude"], row["longitude"]
            )
            if distance <= radius_meters:
                found.append((distance, row["seq"], row))
        found.sort(key=lambda item: (item[0], item[1]))
        return [(_row_to_driver(row), distance) for distance, _, row in found[:limit]]

    def close(self) -> None:
        self.db.close()
