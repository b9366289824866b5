"""The driver store on both engines: nearby search by grid cell, checked against every driver measured
exactly; the migration that gives existing drivers their cell."""

from __future__ import annotations

import math
import random
import uuid
from pathlib import Path

import pytest
from google.type.latlng_pb2 import LatLng
from rideshare.drivers.v1 import drivers_pb2 as pb

from services.domain import geo
from services.drivers.store import _ON_TRIP_FOR, MIGRATIONS, DriverStore, search_query
from services.runtime.storage import Database
from tests.postgres import Backends

from .test_search import METERS_PER_DEGREE


@pytest.mark.parametrize(
    "center", [LatLng(latitude=51.5, longitude=-0.1), LatLng(latitude=0, longitude=179.99)]
)
def test_each_range_of_cells_is_one_search_of_the_cell_index(center):
    db = Database(":memory:", MIGRATIONS)
    try:
        window = geo.cell_window(center, 5000)
        sql, params = search_query(center, window, 5000, 10)
        plan = [row["detail"] for row in db.query(f"EXPLAIN QUERY PLAN {sql}", params)]
    finally:
        db.close()

    searches = [step for step in plan if step.startswith("SEARCH")]
    assert len(searches) == len(window.ranges) > 1
    assert all("USING INDEX drivers_by_status_cell (status=? AND cell>? AND cell<?)" in s for s in searches)


def _before_cells(directory: Path) -> Path:
    """The drivers' migrations before cells, as a directory (each file includes the real one)."""
    directory.mkdir()
    for file in MIGRATIONS.glob("*.sql"):
        if int(file.name[:4]) < 4:
            (directory / file.name).write_text(f"\\ir {file.resolve()}\n", encoding="utf-8")
    return directory


def test_the_migration_puts_existing_drivers_in_the_cells_new_ones_get(backends: Backends, runner, tmp_path):
    places = [(51.5, -0.1), (-33.86, 151.21), (0.0, 180.0), (0.0, -180.0), (90.0, 0.0), (-90.0, 12.5)]
    old = backends.open(_before_cells(tmp_path / "old"), name="drivers")

    async def register() -> None:
        async with old.transaction() as tx:
            for number, (latitude, longitude) in enumerate(places):
                await tx.execute(
                    "INSERT INTO drivers (id, display_name, vehicle_make, vehicle_model, license_plate, "
                    "status, latitude, longitude, create_time, update_time) "
                    "VALUES (?, 'D', 'M', 'M', 'P', 2, ?, ?, 0, 0)",
                    (f"d{number}", latitude, longitude),
                )
            await tx.execute(
                "INSERT INTO drivers (id, display_name, vehicle_make, vehicle_model, license_plate, "
                "status, create_time, update_time) VALUES ('never-online', 'D', 'M', 'M', 'P', 1, 0, 0)"
            )

    runner.run(register())
    db = backends.open(MIGRATIONS, name="drivers")
    rows = runner.run(db.query("SELECT cell FROM drivers ORDER BY seq"))

    assert [row["cell"] for row in rows] == [*(geo.cell_of(*place) for place in places), None]


def _store(backends: Backends) -> DriverStore:
    return DriverStore(backends.open(MIGRATIONS))


def _add(runner, store: DriverStore, places, status=pb.DRIVER_STATUS_AVAILABLE) -> list[str]:
    async def add() -> list[str]:
        names = []
        async with store.db.transaction() as tx:
            for number, (latitude, longitude) in enumerate(places):
                driver = pb.Driver(
                    name=f"drivers/{uuid.uuid4().hex}",
                    display_name=f"Driver {number}",
                    status=status,
                    location=LatLng(latitude=latitude, longitude=longitude),
                )
                await store.insert(tx, driver)
                names.append(driver.name)
        return names

    result: list[str] = runner.run(add())
    return result


def _exact(store_places: dict[str, tuple[float, float]], center: LatLng, radius: float, limit: int):
    """What a search must answer: every driver measured, within the radius, nearest first, then by age."""
    measured = [
        (geo.haversine_meters(center.latitude, center.longitude, *place), order, name)
        for order, (name, place) in enumerate(store_places.items())
    ]
    return [name for meters, _, name in sorted(measured) if meters <= radius][:limit]


def _around(rng: random.Random, latitude: float, longitude: float, meters: float) -> tuple[float, float]:
    north, east = rng.uniform(-meters, meters), rng.uniform(-meters, meters)
    scale = max(math.cos(math.radians(latitude)), 1e-3)
    return (
        max(-90.0, min(90.0, latitude + north / METERS_PER_DEGREE)),
        (longitude + east / (METERS_PER_DEGREE * scale) + 540.0) % 360.0 - 180.0,
    )


@pytest.mark.parametrize(
    ("latitude", "longitude", "spread"),
    [
        (52.52, 13.405, 8000),  # a city
        (52.52, 13.405, 600),  # a crowd: many drivers in each cell
        (-17.0, 179.995, 8000),  # across the antimeridian
        (89.97, 40.0, 8000),  # around the North Pole
        (-89.99, 0.0, 3000),  # at the South Pole
    ],
)
def test_search_answers_what_measuring_every_driver_answers(backends, runner, latitude, longitude, spread):
    rng = random.Random(f"{latitude},{longitude},{spread}")
    store = _store(backends)
    places = [_around(rng, latitude, longitude, spread) for _ in range(400)]
    by_name = dict(zip(_add(runner, store, places), places, strict=True))
    _add(runner, store, places[:50], status=pb.DRIVER_STATUS_ON_TRIP)

    for _ in range(25):
        at = _around(rng, latitude, longitude, spread)
        center = LatLng(latitude=at[0], longitude=at[1])
        radius = rng.choice([300.0, 2000.0, 5000.0, 50_000.0])
        limit = rng.choice([1, 10, 100])

        found = runner.run(store.search(center, radius, limit))

        assert [driver.name for driver, _ in found] == _exact(by_name, center, radius, limit)
        for driver, meters in found:
            assert meters == pytest.approx(geo.distance_meters(center, driver.location), abs=1e-6)


def test_ties_are_broken_by_registration_order_even_past_the_limit(backends, runner):
    store = _store(backends)
    center = LatLng(latitude=48.85, longitude=2.35)
    tied = _add(runner, store, [(48.85 + 300 / METERS_PER_DEGREE, 2.35)] * 15)
    nearer = _add(runner, store, [(48.85 + 100 / METERS_PER_DEGREE, 2.35)] * 3)

    found = runner.run(store.search(center, 1000, 10))

    assert [driver.name for driver, _ in found] == nearer + tied[:7]


@pytest.mark.parametrize("crowd", [200, 4000])
def test_a_search_fetches_about_as_many_rows_as_it_returns_however_many_drivers_are_around(
    backends, runner, crowd
):
    store = _store(backends)
    rng = random.Random(crowd)
    _add(runner, store, [_around(rng, 52.52, 13.405, 2000) for _ in range(crowd)])
    read = []
    query = store.db.query

    async def counted(sql, params=()):
        rows = await query(sql, params)
        read.append(len(rows))
        return rows

    store.db.query = counted  # type: ignore[method-assign]
    found = runner.run(store.search(LatLng(latitude=52.52, longitude=13.405), 5000, 10))

    assert len(found) == 10
    assert sum(read) <= 6 * 10, read


def test_the_driver_of_a_trip_is_found_by_the_index_on_current_trip():
    db = Database(":memory:", MIGRATIONS)
    try:
        plan = [row["detail"] for row in db.query(f"EXPLAIN QUERY PLAN {_ON_TRIP_FOR}", ("trips/t1",))]
    finally:
        db.close()

    assert plan == ["SEARCH drivers USING INDEX drivers_current_trip_key (current_trip=?)"]
