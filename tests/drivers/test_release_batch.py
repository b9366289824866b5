"""BatchReleaseTrips (AIP-233), the trip outbox's releases: each entry as ReleaseTrip, in order, all or
none, each replayed by its own request_id (alone or in a batch); the RPC through the service (SQLite),
then the store on both engines."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.type.latlng_pb2 import LatLng
from rideshare.drivers.v1 import drivers_pb2 as pb

from services.drivers import domain
from services.drivers.store import MIGRATIONS, DriverStore
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.runtime.resources import BatchLog, log_answer
from tests.postgres import Backends

from .test_search import north_of

MISSING = "drivers/nobody"


def entry(name: str, trip: str, request_id: str = "") -> pb.ReleaseTripRequest:
    return pb.ReleaseTripRequest(name=name, trip=trip, request_id=request_id)


def batch(drivers, *entries: pb.ReleaseTripRequest) -> list[pb.Driver]:
    request = pb.BatchReleaseTripsRequest(requests=list(entries))
    return list(drivers.call(drivers.stub.BatchReleaseTrips(request)).drivers)


def refused(drivers, *entries: pb.ReleaseTripRequest):
    return drivers.fail(drivers.stub.BatchReleaseTrips(pb.BatchReleaseTripsRequest(requests=list(entries))))


def on_trips(drivers, *trips: str) -> list[pb.Driver]:
    """A driver ON_TRIP for each trip, 100 m apart."""
    online = [drivers.online(*north_of(100 * (i + 1))) for i in range(len(trips))]
    return [drivers.assign(driver.name, trip) for driver, trip in zip(online, trips, strict=True)]


def test_a_batch_releases_each_driver_and_answers_in_the_order_of_its_entries(drivers):
    one, two, three = on_trips(drivers, "trips/t1", "trips/t2", "trips/t3")
    free = drivers.online(*north_of(1000))

    released = batch(
        drivers,
        entry(three.name, "trips/t3"),
        entry(free.name, "trips/t9"),
        entry(one.name, "trips/t1", "r1"),
        entry(two.name, "trips/t2"),
    )

    assert [d.name for d in released] == [three.name, free.name, one.name, two.name]
    assert released[1] == free  # on no trip: unchanged, as ReleaseTrip leaves it
    for driver in (released[0], released[2], released[3]):
        assert (driver.status, driver.current_trip) == (pb.DRIVER_STATUS_AVAILABLE, "")
        assert drivers.get(driver.name) == driver


def test_a_repeated_batch_changes_nothing_and_answers_the_same(drivers):
    one, two = on_trips(drivers, "trips/t1", "trips/t2")
    entries = (entry(one.name, "trips/t1", "r1"), entry(two.name, "trips/t2", "r2"))
    first = batch(drivers, *entries)
    again_on_a_trip = drivers.assign(one.name, "trips/t5")

    assert batch(drivers, *entries) == first  # the outbox resending after a lost answer
    assert drivers.get(one.name) == again_on_a_trip  # not released from its new trip


def test_an_entry_and_a_lone_release_with_one_request_id_replay_each_other(drivers):
    one, two = on_trips(drivers, "trips/t1", "trips/t2")
    alone = drivers.release(one.name, "trips/t1", request_id="r1")
    drivers.assign(one.name, "trips/t5")

    first = batch(drivers, entry(one.name, "trips/t1", "r1"), entry(two.name, "trips/t2", "r2"))

    assert first[0] == alone
    assert drivers.get(one.name).current_trip == "trips/t5"
    drivers.assign(two.name, "trips/t6")
    assert drivers.release(two.name, "trips/t2", request_id="r2") == first[1]
    assert drivers.get(two.name).current_trip == "trips/t6"


def test_the_same_driver_twice_sees_the_earlier_entry_s_release(drivers):
    (one,) = on_trips(drivers, "trips/t1")

    # Alone, the second would be refused (the driver is on t1, not t2); after the first it is free.
    released = batch(drivers, entry(one.name, "trips/t1"), entry(one.name, "trips/t2"))

    assert released[0] == released[1] == drivers.get(one.name)
    assert released[0].status == pb.DRIVER_STATUS_AVAILABLE


@pytest.mark.parametrize(
    ("missing", "code", "reason", "field"),
    [
        (False, grpc.StatusCode.FAILED_PRECONDITION, "DRIVER_ON_ANOTHER_TRIP", "requests[1].trip"),
        (True, grpc.StatusCode.NOT_FOUND, "DRIVER_NOT_FOUND", "requests[1].name"),
    ],
)
def test_a_refused_entry_refuses_the_batch_naming_the_entry(drivers, missing, code, reason, field):
    one, two = on_trips(drivers, "trips/t1", "trips/t2")
    bad = entry(MISSING, "trips/t2") if missing else entry(two.name, "trips/t9")

    failure = refused(drivers, entry(one.name, "trips/t1", "r1"), bad, entry(two.name, "trips/t2"))

    assert (failure.code, failure.info.reason) == (code, reason)
    assert failure.message.startswith(f"{field}: ")
    assert failure.info.metadata["field"] == field
    assert [drivers.get(d.name) for d in (one, two)] == [one, two]  # the first entry rolled back too
    # Nor was its answer kept: the same request_id now releases the driver.
    assert drivers.release(one.name, "trips/t1", request_id="r1").status == pb.DRIVER_STATUS_AVAILABLE


@pytest.mark.parametrize(
    ("bad", "fields"),
    [
        (entry("trips/t1", "trips/t1"), ["requests[1].name"]),
        (entry("drivers/d", "drivers/d"), ["requests[1].trip"]),
        (pb.ReleaseTripRequest(), ["requests[1].name", "requests[1].trip"]),
        (entry("drivers/d", "trips/t1", "x" * 129), ["requests[1].request_id"]),
    ],
)
def test_a_malformed_entry_is_named_by_its_index_and_nothing_is_released(drivers, bad, fields):
    (one,) = on_trips(drivers, "trips/t1")

    failure = refused(drivers, entry(one.name, "trips/t1"), bad)

    assert (failure.code, failure.fields) == (grpc.StatusCode.INVALID_ARGUMENT, fields)
    assert drivers.get(one.name) == one


@pytest.mark.parametrize(("count", "allowed"), [(0, False), (100, True), (101, False)])
def test_a_batch_holds_one_to_a_hundred_entries(drivers, count, allowed):
    (one,) = on_trips(drivers, "trips/t1")
    entries = [entry(one.name, "trips/t1")] * count

    if allowed:
        assert len(batch(drivers, *entries)) == count
        assert drivers.get(one.name).status == pb.DRIVER_STATUS_AVAILABLE
    else:
        failure = refused(drivers, *entries)
        assert (failure.code, failure.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["requests"])
        assert drivers.get(one.name) == one


def test_a_request_id_twice_in_a_batch_is_released_once_or_refused_if_the_entries_differ(drivers):
    one, two = on_trips(drivers, "trips/t1", "trips/t2")

    request = entry(one.name, "trips/t1", "r1")
    released = batch(drivers, request, entry(two.name, "trips/t2"), request)
    assert released[2] == released[0]

    failure = refused(drivers, entry(one.name, "trips/t1", "r7"), entry(two.name, "trips/t2", "r7"))
    assert (failure.code, failure.info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    assert failure.fields == ["requests[1].request_id"]

    failure = refused(drivers, entry(two.name, "trips/t2", "r2"), entry(two.name, "trips/t2", "r1"))
    assert failure.info.reason == "REQUEST_ID_REUSED"  # r1 answered another request before
    assert failure.fields == ["requests[1].request_id"]


# --- the store, on both engines ----------------------------------------------------------------------


def _on_trips(runner, store: DriverStore, *trips: str) -> list[pb.Driver]:
    async def add() -> list[pb.Driver]:
        added = []
        async with store.db.transaction() as tx:
            for number, trip in enumerate(trips):
                driver = pb.Driver(
                    name=f"drivers/d{number}",
                    display_name=f"Driver {number}",
                    status=pb.DRIVER_STATUS_ON_TRIP,
                    current_trip=trip,
                    location=LatLng(latitude=51.5, longitude=-0.1),
                )
                await store.insert(tx, driver)
                added.append(await store.read(tx, f"d{number}"))
        return added

    added: list[pb.Driver] = runner.run(add())
    return added


def test_the_store_releases_all_or_none_and_replays_per_entry(backends: Backends, runner):
    store = DriverStore(backends.open(MIGRATIONS))
    one, two = _on_trips(runner, store, "trips/t1", "trips/t2")
    good = entry(one.name, "trips/t1", "r1")

    for bad, error in [
        (entry(two.name, "trips/t9", "r2"), FailedPrecondition),
        (entry(MISSING, "trips/t2", "r2"), NotFound),
        (entry(two.name, "trips/t2", "r1"), InvalidArgument),
    ]:
        with pytest.raises(error):
            runner.run(store.release_batch([good, bad]))
        assert [runner.run(store.get(d.name)) for d in (one, two)] == [one, two]

    released = runner.run(store.release_batch([good, entry(two.name, "trips/t2", "r2")]))
    again = runner.run(store.release_batch([entry(two.name, "trips/t2", "r2"), good]))

    assert [d.current_trip for d in released] == ["", ""]
    assert again == released[::-1]
    assert [runner.run(store.get(d.name)) for d in (one, two)] == released


def test_a_batch_takes_a_driver_who_asked_to_go_offline_offline(backends: Backends, runner):
    store = DriverStore(backends.open(MIGRATIONS))
    one, two = _on_trips(runner, store, "trips/t1", "trips/t2")
    runner.run(store.update(one.name, domain.go_offline, pb.GoOfflineRequest(name=one.name)))

    released = runner.run(store.release_batch([entry(one.name, "trips/t1"), entry(two.name, "trips/t2")]))

    assert [(d.status, d.offline_after_trip) for d in released] == [
        (pb.DRIVER_STATUS_OFFLINE, False),
        (pb.DRIVER_STATUS_AVAILABLE, False),
    ]
    assert [runner.run(store.get(d.name)) for d in (one, two)] == released


def test_a_request_id_another_request_logs_meanwhile_is_refused_as_reused(replicas, runner, monkeypatch):
    one, other = replicas
    (driver,) = _on_trips(runner, one, "trips/t1")
    read_the_log = asyncio.Event()

    write = BatchLog.write

    async def about_to_log(log, tx):
        read_the_log.set()
        await write(log, tx)

    monkeypatch.setattr(BatchLog, "write", about_to_log)

    async def scenario():
        async with other.db.transaction() as tx:  # another request with r1, committed after the batch read
            await log_answer(tx, "ReleaseTrip", "r1", "another request", pb.Driver())
            released = asyncio.create_task(one.release_batch([entry(driver.name, "trips/t1", "r1")]))
            await asyncio.wait(
                [released, asyncio.create_task(read_the_log.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            assert read_the_log.is_set(), released.result()
        with pytest.raises(InvalidArgument) as caught:
            await released
        return caught.value

    refused = runner.run(scenario())

    assert (refused.reason, refused.violations[0].field) == ("REQUEST_ID_REUSED", "requests[0].request_id")
    assert runner.run(one.get(driver.name)) == driver
