"""The driver rules without a server: the status machine and the search limits."""

from __future__ import annotations

import pytest
from google.type import latlng_pb2
from rideshare.drivers.v1 import drivers_pb2 as pb

from services.drivers import domain
from services.runtime.errors import FailedPrecondition, InvalidArgument

HERE = latlng_pb2.LatLng(latitude=1, longitude=2)


def driver(status: int, trip: str = "") -> pb.Driver:
    return pb.Driver(
        name="drivers/d1",
        display_name="Dee",
        vehicle=pb.Vehicle(make="Kia", model="Niro", license_plate="X"),
        status=status,
        current_trip=trip,
    )


@pytest.mark.parametrize(
    ("before", "change", "after"),
    [
        (driver(pb.DRIVER_STATUS_OFFLINE), lambda d: domain.go_online(d, HERE), pb.DRIVER_STATUS_AVAILABLE),
        (driver(pb.DRIVER_STATUS_AVAILABLE), lambda d: domain.go_online(d, HERE), pb.DRIVER_STATUS_AVAILABLE),
        (
            driver(pb.DRIVER_STATUS_ON_TRIP, "trips/t"),
            lambda d: domain.go_online(d, HERE),
            pb.DRIVER_STATUS_ON_TRIP,
        ),
        (driver(pb.DRIVER_STATUS_AVAILABLE), domain.go_offline, pb.DRIVER_STATUS_OFFLINE),
        (
            driver(pb.DRIVER_STATUS_ON_TRIP, "trips/t"),
            lambda d: domain.release_trip(d, "trips/t"),
            pb.DRIVER_STATUS_AVAILABLE,
        ),
    ],
)
def test_transitions_change_the_status_and_the_update_time(before, change, after):
    changed = change(before)

    assert changed.status == after
    assert changed.update_time.ToNanoseconds() > 0
    assert before.update_time.ToNanoseconds() == 0


@pytest.mark.parametrize(
    ("before", "change"),
    [
        (driver(pb.DRIVER_STATUS_OFFLINE), domain.go_offline),
        (domain.go_offline(driver(pb.DRIVER_STATUS_ON_TRIP, "trips/t")), domain.go_offline),
        (driver(pb.DRIVER_STATUS_AVAILABLE), lambda d: domain.release_trip(d, "trips/t")),
        (driver(pb.DRIVER_STATUS_OFFLINE), lambda d: domain.release_trip(d, "trips/t")),
    ],
)
def test_repeats_return_the_very_same_driver(before, change):
    assert change(before) is before


@pytest.mark.parametrize(
    ("before", "change", "reason"),
    [
        (driver(pb.DRIVER_STATUS_ON_TRIP, "trips/t"), domain.check_deletable, "DRIVER_ON_TRIP"),
        (driver(pb.DRIVER_STATUS_OFFLINE), lambda d: domain.update_location(d, HERE), "DRIVER_OFFLINE"),
        (
            driver(pb.DRIVER_STATUS_ON_TRIP, "trips/t"),
            lambda d: domain.release_trip(d, "trips/u"),
            "DRIVER_ON_ANOTHER_TRIP",
        ),
    ],
)
def test_illegal_transitions_name_their_reason(before, change, reason):
    with pytest.raises(FailedPrecondition) as caught:
        change(before)

    assert caught.value.reason == reason


def test_going_offline_on_a_trip_takes_effect_when_the_trip_ends():
    on_trip = driver(pb.DRIVER_STATUS_ON_TRIP, "trips/t")

    going = domain.go_offline(on_trip)
    ended = domain.release_trip(going, "trips/t")

    assert (going.status, going.current_trip, going.offline_after_trip) == (
        pb.DRIVER_STATUS_ON_TRIP,
        "trips/t",
        True,
    )
    assert going.update_time.ToNanoseconds() > 0
    assert (ended.status, ended.current_trip, ended.offline_after_trip) == (
        pb.DRIVER_STATUS_OFFLINE,
        "",
        False,
    )


def test_going_online_on_a_trip_takes_back_going_offline():
    going = domain.go_offline(driver(pb.DRIVER_STATUS_ON_TRIP, "trips/t"))

    staying = domain.go_online(going, HERE)

    assert (staying.status, staying.offline_after_trip) == (pb.DRIVER_STATUS_ON_TRIP, False)
    assert domain.release_trip(staying, "trips/t").status == pb.DRIVER_STATUS_AVAILABLE


@pytest.mark.parametrize(
    ("requested", "allowed"), [(0, 10), (1, 1), (10, 10), (100, 100), (101, 100), (10**9, 100)]
)
def test_search_page_size_follows_the_contract(requested, allowed):
    assert domain.search_limits(HERE, 1000, requested) == allowed


def test_search_reports_a_bad_location_and_radius_together():
    with pytest.raises(InvalidArgument) as caught:
        domain.search_limits(latlng_pb2.LatLng(latitude=-90.1, longitude=0), 0, 0)

    assert [v.field for v in caught.value.violations] == ["location.latitude", "radius_meters"]
    assert caught.value.reason == "INVALID_LOCATION"
