"""The driver status machine over the wire: going on and offline, moving, and trips."""

from __future__ import annotations

import math

import grpc
import pytest
from google.type import latlng_pb2
from rideshare.drivers.v1 import drivers_pb2 as pb


def test_go_online_makes_an_offline_driver_available_at_the_place(drivers):
    created = drivers.create()

    online = drivers.go_online(created.name, 48.8566, 2.3522)

    assert online.status == pb.DRIVER_STATUS_AVAILABLE
    assert online.location == latlng_pb2.LatLng(latitude=48.8566, longitude=2.3522)
    assert online.location_update_time == online.update_time
    assert online.update_time.ToNanoseconds() >= created.update_time.ToNanoseconds()
    assert drivers.get(created.name) == online


def test_going_online_again_only_moves_the_driver(drivers):
    online = drivers.online(51.5, -0.1)
    on_trip = drivers.assign(online.name, "trips/t1")

    moved = drivers.go_online(online.name, 51.6, -0.2)

    assert moved.status == pb.DRIVER_STATUS_ON_TRIP
    assert moved.current_trip == on_trip.current_trip
    assert moved.location == latlng_pb2.LatLng(latitude=51.6, longitude=-0.2)


def test_go_offline_keeps_the_last_location_and_repeats_harmlessly(drivers):
    online = drivers.online(51.5, -0.1)

    offline = drivers.call(drivers.stub.GoOffline(pb.GoOfflineRequest(name=online.name)))
    again = drivers.call(drivers.stub.GoOffline(pb.GoOfflineRequest(name=online.name)))

    assert offline.status == pb.DRIVER_STATUS_OFFLINE
    assert offline.location == online.location
    assert again == offline


def test_a_driver_going_offline_on_a_trip_finishes_it_and_then_goes_offline(drivers):
    on_trip = drivers.assign(drivers.online().name, "trips/t1")

    going = drivers.call(drivers.stub.GoOffline(pb.GoOfflineRequest(name=on_trip.name)))
    again = drivers.call(drivers.stub.GoOffline(pb.GoOfflineRequest(name=on_trip.name)))
    stored = drivers.get(on_trip.name)
    ended = drivers.release(on_trip.name, "trips/t1")

    assert (going.status, going.current_trip, going.offline_after_trip) == (
        pb.DRIVER_STATUS_ON_TRIP,
        "trips/t1",
        True,
    )
    assert again == going == stored != on_trip
    assert (ended.status, ended.current_trip, ended.offline_after_trip) == (
        pb.DRIVER_STATUS_OFFLINE,
        "",
        False,
    )
    assert drivers.get(on_trip.name) == ended


def test_going_online_on_a_trip_keeps_the_driver_online_after_it(drivers):
    on_trip = drivers.assign(drivers.online().name, "trips/t1")
    drivers.call(drivers.stub.GoOffline(pb.GoOfflineRequest(name=on_trip.name)))

    staying = drivers.go_online(on_trip.name, 51.6, -0.2)
    ended = drivers.release(on_trip.name, "trips/t1")

    assert (staying.status, staying.offline_after_trip) == (pb.DRIVER_STATUS_ON_TRIP, False)
    assert ended.status == pb.DRIVER_STATUS_AVAILABLE


def test_update_location_moves_an_online_driver(drivers):
    online = drivers.online(51.5, -0.1)
    request = pb.UpdateDriverLocationRequest(
        name=online.name, location={"latitude": 51.51, "longitude": -0.11}
    )

    moved = drivers.call(drivers.stub.UpdateDriverLocation(request))

    assert moved.status == pb.DRIVER_STATUS_AVAILABLE
    assert moved.location == latlng_pb2.LatLng(latitude=51.51, longitude=-0.11)
    assert moved.location_update_time.ToNanoseconds() >= online.location_update_time.ToNanoseconds()


def test_an_offline_driver_cannot_report_a_location(drivers):
    created = drivers.create()
    request = pb.UpdateDriverLocationRequest(name=created.name, location={"latitude": 51.5})

    failure = drivers.fail(drivers.stub.UpdateDriverLocation(request))

    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.info.reason == "DRIVER_OFFLINE"
    assert drivers.get(created.name) == created


@pytest.mark.parametrize(
    ("location", "fields"),
    [
        ({"latitude": 90.5, "longitude": 0}, ["location.latitude"]),
        ({"latitude": -91, "longitude": 0}, ["location.latitude"]),
        ({"latitude": 0, "longitude": 180.01}, ["location.longitude"]),
        ({"latitude": 100, "longitude": -200}, ["location.latitude", "location.longitude"]),
        ({"latitude": math.nan, "longitude": math.inf}, ["location.latitude", "location.longitude"]),
    ],
)
@pytest.mark.parametrize("method", ["GoOnline", "UpdateDriverLocation"])
def test_a_location_off_the_globe_is_invalid_location(drivers, method, location, fields):
    online = drivers.online()
    request_type = getattr(pb, f"{method}Request")

    failure = drivers.fail(getattr(drivers.stub, method)(request_type(name=online.name, location=location)))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "INVALID_LOCATION"
    assert failure.fields == fields
    assert drivers.get(online.name) == online


def test_the_edges_of_the_globe_are_valid_locations(drivers):
    created = drivers.create()

    assert drivers.go_online(created.name, 90, -180).location == latlng_pb2.LatLng(
        latitude=90, longitude=-180
    )
    assert drivers.go_online(created.name, -90, 180).location == latlng_pb2.LatLng(
        latitude=-90, longitude=180
    )


def test_go_online_needs_a_location(drivers):
    created = drivers.create()

    failure = drivers.fail(drivers.stub.GoOnline(pb.GoOnlineRequest(name=created.name)))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["location"]


def test_release_trip_makes_the_driver_available_again_and_repeats_harmlessly(drivers):
    on_trip = drivers.assign(drivers.online().name, "trips/t1")

    released = drivers.release(on_trip.name, "trips/t1")
    again = drivers.release(on_trip.name, "trips/t1")

    assert released.status == pb.DRIVER_STATUS_AVAILABLE
    assert released.current_trip == ""
    assert again == released
    assert drivers.assign(on_trip.name, "trips/t2").current_trip == "trips/t2"


def test_releasing_a_driver_on_no_trip_returns_it_unchanged(drivers):
    offline = drivers.create()
    online = drivers.online()

    assert drivers.release(offline.name, "trips/t1") == offline
    assert drivers.release(online.name, "trips/t1") == online


def test_releasing_another_trip_is_refused(drivers):
    on_trip = drivers.assign(drivers.online().name, "trips/t1")

    failure = drivers.fail(
        drivers.stub.ReleaseTrip(pb.ReleaseTripRequest(name=on_trip.name, trip="trips/t2"))
    )

    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.info.reason == "DRIVER_ON_ANOTHER_TRIP"
    assert dict(failure.info.metadata) == {
        "name": on_trip.name,
        "status": "DRIVER_STATUS_ON_TRIP",
        "trip": "trips/t2",
        "current_trip": "trips/t1",
    }
    assert drivers.get(on_trip.name) == on_trip


def test_a_driver_on_a_trip_cannot_be_deleted(drivers):
    on_trip = drivers.assign(drivers.online().name, "trips/t1")

    failure = drivers.fail(drivers.stub.DeleteDriver(pb.DeleteDriverRequest(name=on_trip.name)))

    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.info.reason == "DRIVER_ON_TRIP"
    assert drivers.get(on_trip.name) == on_trip
    drivers.release(on_trip.name, "trips/t1")
    drivers.call(drivers.stub.DeleteDriver(pb.DeleteDriverRequest(name=on_trip.name)))


def test_status_method_replays_return_the_first_answer(drivers):
    created = drivers.create()
    first = drivers.go_online(created.name, 51.5, -0.1, request_id="on-1")
    drivers.go_online(created.name, 52.0, 0.1)

    assert drivers.go_online(created.name, 51.5, -0.1, request_id="on-1") == first
    assert drivers.get(created.name).location.latitude == 52.0

    offline = pb.GoOfflineRequest(name=created.name, request_id="off-1")
    went = drivers.call(drivers.stub.GoOffline(offline))
    drivers.go_online(created.name, 51.5, -0.1)
    assert drivers.call(drivers.stub.GoOffline(offline)) == went
    assert drivers.get(created.name).status == pb.DRIVER_STATUS_AVAILABLE

    release = pb.ReleaseTripRequest(name=created.name, trip="trips/t1", request_id="rel-1")
    drivers.assign(created.name, "trips/t1")
    released = drivers.call(drivers.stub.ReleaseTrip(release))
    drivers.assign(created.name, "trips/t2")
    assert drivers.call(drivers.stub.ReleaseTrip(release)) == released
    assert drivers.get(created.name).current_trip == "trips/t2"
