"""Where drivers are kept: their table, the driver as a row of it, and the nearby search.

Status changes go through the kit's `update`: it reads the row, applies a rule
from `domain`, and writes the result inside one transaction (SQLite takes the
write lock before the read, `BEGIN IMMEDIATE`, and no `await` happens in
between), so two trips racing for one driver are serialized and the second
sees ON_TRIP. On PostgreSQL the kit reads the row `FOR UPDATE` to the same
effect.

Search prefilters with a latitude/longitude box on the index
`(status, latitude, longitude)`; exact great-circle distances are computed
only for the rows inside the box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.type.latlng_pb2 import LatLng
from rideshare.drivers.v1.drivers_pb2 import DRIVER_STATUS_AVAILABLE, Driver, Vehicle

from services.domain import geo
from services.runtime.aip import timestamp_from_ns
from services.runtime.errors import AlreadyExists
from services.runtime.resources import Backend, Resource, Row, Store

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
        "latitude": driver.location.latitude if located else None,
        "longitude": driver.location.longitude if located else None,
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


class DriverStore(Store[Driver]):
    """The kit's standard methods, plus the search for AVAILABLE drivers near a point."""

    def __init__(self, db: Backend) -> None:
        super().__init__(db, DRIVERS)

    async def search(self, center: LatLng, radius_meters: float, limit: int) -> Nearby:
        """The AVAILABLE drivers within the radius, nearest first (ties by registration order)."""
        rows = await self.db.query(*search_query(geo.bounding_box(center, radius_meters)))
        found = []
        for row in rows:
            distance = geo.haversine_meters(
                center.latitude, center.longitude, row["latitude"], row["longitude"]
            )
            if distance <= radius_meters:
                found.append((distance, row["seq"], row))
        found.sort(key=lambda item: (item[0], item[1]))
        return [(_driver(row), distance) for distance, _, row in found[:limit]]
