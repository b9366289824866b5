"""AssignNearestDriver: the nearest AVAILABLE driver becomes ON_TRIP for a trip, once per trip.

Through the service (SQLite), then the store on both engines, where PostgreSQL lets
two drivers replicas race for the same drivers.
"""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from google.type.latlng_pb2 import LatLng
from rideshare.drivers.v1 import drivers_pb2 as pb

from services.drivers import store as store_module
from services.drivers.store import MIGRATIONS, DriverStore
from services.runtime.errors import FailedPrecondition
from tests.postgres import Backends

from .conftest import CENTER
from .test_search import north_of


def test_the_nearest_available_driver_is_put_on_the_trip(drivers):
    drivers.online(*north_of(900))
    near = drivers.online(*north_of(300))
    drivers.online(*north_of(600))

    assigned = drivers.assign_nearest("trips/t1")

    assert assigned.name == near.name
    assert assigned.status == pb.DRIVER_STATUS_ON_TRIP
    assert assigned.current_trip == "trips/t1"
    assert assigned.location == near.location
    assert drivers.get(near.name) == assigned


def test_drivers_on_a_trip_or_offline_are_never_chosen(drivers):
    busy = drivers.online(*north_of(100))
    drivers.assign(busy.name, "trips/t0")
    offline = drivers.online(*north_of(200))
    drivers.call(drivers.stub.GoOffline(pb.GoOfflineRequest(name=offline.name)))
    free = drivers.online(*north_of(800))

    assert drivers.assign_nearest("trips/t1").name == free.name
    assert drivers.get(busy.name).current_trip == "trips/t0"
    assert drivers.get(offline.name).status == pb.DRIVER_STATUS_OFFLINE


def test_a_repeat_for_the_same_trip_returns_its_driver_unchanged(drivers):
    far = drivers.online(*north_of(700))
    first = drivers.assign_nearest("trips/t1")
    nearer = drivers.online(*north_of(10))

    again = drivers.assign_nearest("trips/t1")

    assert again == first
    assert again.name == far.name
    assert drivers.get(nearer.name).status == pb.DRIVER_STATUS_AVAILABLE
    # Wherever and however far the repeat looks: the trip has its driver.
    assert drivers.assign_nearest("trips/t1", -33.86, 151.21, radius=1) == first


def test_each_trip_gets_its_own_driver_and_then_there_is_none(drivers):
    names = {drivers.online(*north_of(100 * i)).name for i in range(1, 4)}

    assigned = [drivers.assign_nearest(f"trips/t{i}").name for i in range(3)]
    failure = drivers.fail(
        drivers.stub.AssignNearestDriver(
            pb.AssignNearestDriverRequest(trip="trips/t3", pickup=CENTER, radius_meters=1000)
        )
    )

    assert sorted(assigned) == sorted(names)
    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.info.reason == "NO_DRIVER_AVAILABLE"


def test_none_within_the_radius_is_no_driver_available_naming_the_pickup(drivers):
    outside = drivers.online(*north_of(1000.1))
    request = pb.AssignNearestDriverRequest(trip="trips/t1", pickup=CENTER, radius_meters=1000)

    failure = drivers.fail(drivers.stub.AssignNearestDriver(request))

    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.info.reason == "NO_DRIVER_AVAILABLE"
    assert failure.info.domain == "drivers.rideshare"
    assert dict(failure.info.metadata) == {
        "latitude": f"{CENTER.latitude:.6f}",
        "longitude": f"{CENTER.longitude:.6f}",
    }
    assert drivers.get(outside.name).status == pb.DRIVER_STATUS_AVAILABLE


def test_a_released_driver_can_be_assigned_again(drivers):
    online = drivers.online()
    drivers.assign_nearest("trips/t1")
    drivers.release(online.name, "trips/t1")

    assert drivers.assign_nearest("trips/t2").current_trip == "trips/t2"


@pytest.mark.parametrize(
    ("request_fields", "fields"),
    [
        ({}, ["trip", "pickup", "radius_meters"]),
        ({"trip": "drivers/1", "pickup": CENTER, "radius_meters": 10}, ["trip"]),
        ({"trip": "trips/1", "pickup": CENTER, "radius_meters": 50_000.5}, ["radius_meters"]),
        ({"trip": "trips/1", "pickup": CENTER, "radius_meters": math.nan}, ["radius_meters"]),
        ({"trip": "trips/1", "pickup": CENTER, "radius_meters": -1}, ["radius_meters"]),
        (
            {"trip": "trips/1", "pickup": {"latitude": 95, "longitude": 181}, "radius_meters": 10},
            ["pickup.latitude", "pickup.longitude"],
        ),
    ],
)
def test_bad_fields_are_named(drivers, request_fields, fields):
    drivers.online()

    failure = drivers.fail(drivers.stub.AssignNearestDriver(pb.AssignNearestDriverRequest(**request_fields)))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == fields
    assert [d.status for d in drivers.call(drivers.stub.ListDrivers(pb.ListDriversRequest())).drivers] == [
        pb.DRIVER_STATUS_AVAILABLE
    ]


# --- the store, on both engines ----------------------------------------------------------------------

PICKUP = LatLng(latitude=CENTER.latitude, longitude=CENTER.longitude)


def _online(runner, store: DriverStore, *meters_north: float) -> list[str]:
    async def add() -> list[str]:
        names = []
        async with store.db.transaction() as tx:
            for number, meters in enumerate(meters_north):
                latitude, longitude = north_of(meters)
                driver = pb.Driver(
                    name=f"drivers/d{number}",
                    display_name=f"Driver {number}",
                    status=pb.DRIVER_STATUS_AVAILABLE,
                    location=LatLng(latitude=latitude, longitude=longitude),
                )
                await store.insert(tx, driver)
                names.append(driver.name)
        return names

    names: list[str] = runner.run(add())
    return names


def test_the_store_assigns_the_nearest_once_per_trip(backends: Backends, runner):
    store = DriverStore(backends.open(MIGRATIONS))
    far, near = _online(runner, store, 400, 100)

    first = runner.run(store.assign_nearest("trips/t1", PICKUP, 1000))
    again = runner.run(store.assign_nearest("trips/t1", PICKUP, 1000))
    second = runner.run(store.assign_nearest("trips/t2", PICKUP, 1000))
    with pytest.raises(FailedPrecondition) as caught:
        runner.run(store.assign_nearest("trips/t3", PICKUP, 1000))

    assert (first.name, first.current_trip) == (near, "trips/t1")
    assert again == first
    assert (second.name, second.current_trip) == (far, "trips/t2")
    assert caught.value.reason == "NO_DRIVER_AVAILABLE"


def _race(runner, monkeypatch, *calls):
    """Run `calls` side by side, each searching before any of them takes a driver: all see the same
    drivers AVAILABLE, as replicas do that match at the same moment."""
    barrier = asyncio.Barrier(len(calls))
    nearest = store_module._nearest
    first_search: set[asyncio.Task[object] | None] = set()

    async def searched_together(*args):
        found = await nearest(*args)
        task = asyncio.current_task()
        if task not in first_search:
            first_search.add(task)
            await barrier.wait()
        return found

    monkeypatch.setattr(store_module, "_nearest", searched_together)

    async def run():
        return await asyncio.gather(*calls, return_exceptions=True)

    return runner.run(run())


def test_replicas_racing_for_the_nearest_driver_take_different_drivers(replicas, runner, monkeypatch):
    one, other = replicas
    near, far = _online(runner, one, 100, 300)

    outcomes = _race(
        runner,
        monkeypatch,
        one.assign_nearest("trips/t1", PICKUP, 1000),
        other.assign_nearest("trips/t2", PICKUP, 1000),
    )

    assert {(d.name, d.current_trip) for d in outcomes} in (
        {(near, "trips/t1"), (far, "trips/t2")},
        {(near, "trips/t2"), (far, "trips/t1")},
    )


def test_replicas_racing_for_the_only_driver_one_wins_the_other_finds_none(replicas, runner, monkeypatch):
    one, other = replicas
    (only,) = _online(runner, one, 100)

    outcomes = _race(
        runner,
        monkeypatch,
        one.assign_nearest("trips/t1", PICKUP, 1000),
        other.assign_nearest("trips/t2", PICKUP, 1000),
    )

    winners = [o for o in outcomes if isinstance(o, pb.Driver)]
    losers = [o for o in outcomes if isinstance(o, FailedPrecondition)]
    assert [w.name for w in winners] == [only]
    assert [loser.reason for loser in losers] == ["NO_DRIVER_AVAILABLE"]


def test_replicas_matching_one_trip_at_once_give_it_one_driver(replicas, runner, monkeypatch):
    one, other = replicas
    near, far = _online(runner, one, 100, 300)

    outcomes = _race(
        runner,
        monkeypatch,
        one.assign_nearest("trips/t1", PICKUP, 1000),
        other.assign_nearest("trips/t1", PICKUP, 1000),
    )

    assert [(d.name, d.current_trip) for d in outcomes] == [(near, "trips/t1")] * 2
    assert runner.run(one.get(far)).status == pb.DRIVER_STATUS_AVAILABLE
