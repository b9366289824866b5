"""SearchDrivers: AVAILABLE drivers within a radius, nearest first, with great-circle distances."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.type import latlng_pb2
from rideshare.drivers.v1 import drivers_pb2 as pb

from services.domain import geo

from .conftest import CENTER

#: Meters per degree of latitude on the mesh's sphere.
METERS_PER_DEGREE = geo.EARTH_RADIUS_METERS * math.pi / 180


def north_of(meters: float) -> tuple[float, float]:
    return CENTER.latitude + meters / METERS_PER_DEGREE, CENTER.longitude


def test_search_returns_available_drivers_in_the_radius_nearest_first(drivers):
    far = drivers.online(*north_of(3000))
    near = drivers.online(*north_of(500))
    middle = drivers.online(*north_of(1500))
    drivers.online(*north_of(5100))

    results = drivers.search(CENTER.latitude, CENTER.longitude, 5000)

    assert [r.driver.name for r in results] == [near.name, middle.name, far.name]
    assert [round(r.distance_meters, 3) for r in results] == [500, 1500, 3000]
    assert results[0].driver == near


def test_distance_is_the_great_circle_distance(drivers):
    east = drivers.online(CENTER.latitude, CENTER.longitude + 0.05)

    (found,) = drivers.search(CENTER.latitude, CENTER.longitude, 10_000)

    assert found.driver.name == east.name
    assert found.distance_meters == pytest.approx(geo.distance_meters(CENTER, east.location))
    # Along a parallel a degree of longitude is cos(latitude) of a degree of latitude.
    assert found.distance_meters == pytest.approx(
        0.05 * METERS_PER_DEGREE * math.cos(math.radians(CENTER.latitude)), rel=1e-4
    )


def test_a_driver_just_inside_the_radius_is_found_and_just_outside_is_not(drivers):
    inside = drivers.online(*north_of(999.9))
    drivers.online(*north_of(1000.1))

    assert [r.driver.name for r in drivers.search(CENTER.latitude, CENTER.longitude, 1000)] == [inside.name]


def test_drivers_who_are_offline_or_on_a_trip_are_never_found(drivers):
    busy = drivers.online()
    drivers.assign(busy.name, "trips/t1")
    available = drivers.online()
    offline = drivers.online()
    drivers.call(drivers.stub.GoOffline(pb.GoOfflineRequest(name=offline.name)))
    drivers.create()

    assert [r.driver.name for r in drivers.search(CENTER.latitude, CENTER.longitude, 1000)] == [
        available.name
    ]

    drivers.release(busy.name, "trips/t1")
    found = {r.driver.name for r in drivers.search(CENTER.latitude, CENTER.longitude, 1000)}
    assert found == {available.name, busy.name}


def test_search_follows_drivers_who_move(drivers):
    driver = drivers.online(*north_of(4000))
    drivers.call(
        drivers.stub.UpdateDriverLocation(
            pb.UpdateDriverLocationRequest(
                name=driver.name, location=latlng_pb2.LatLng(latitude=50.0, longitude=10.0)
            )
        )
    )

    assert drivers.search(CENTER.latitude, CENTER.longitude, 5000) == []
    assert [r.driver.name for r in drivers.search(50.0, 10.0, 10)] == [driver.name]


def test_search_finds_drivers_across_the_antimeridian_and_near_a_pole(drivers):
    west = drivers.online(-17.0, 179.99)
    east = drivers.online(-17.0, -179.99)
    polar = drivers.online(89.99, 100.0)
    other_side = drivers.online(89.99, -80.0)

    across = drivers.search(-17.0, 179.999, 5000)
    assert [r.driver.name for r in across] == [west.name, east.name]
    assert across[1].distance_meters < 2000

    at_pole = drivers.search(90.0, 0.0, 5000)
    assert {r.driver.name for r in at_pole} == {polar.name, other_side.name}


def test_page_size_limits_results_to_the_nearest_with_a_default_of_ten(drivers):
    names = [drivers.online(*north_of(100 * (i + 1))).name for i in range(12)]

    assert [r.driver.name for r in drivers.search(CENTER.latitude, CENTER.longitude, 5000)] == names[:10]
    assert [r.driver.name for r in drivers.search(CENTER.latitude, CENTER.longitude, 5000, 3)] == names[:3]
    assert len(drivers.search(CENTER.latitude, CENTER.longitude, 5000, 1000)) == 12


def masked_search(drivers, *paths: str):
    request = pb.SearchDriversRequest(
        location=CENTER, radius_meters=5000, read_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    return drivers.call(drivers.stub.SearchDrivers(request)).results


def test_a_read_mask_of_name_returns_only_the_names_and_the_distances(drivers):
    near = drivers.online(*north_of(500))
    far = drivers.online(*north_of(1500))

    results = masked_search(drivers, "name")

    assert [r.driver for r in results] == [pb.Driver(name=near.name), pb.Driver(name=far.name)]
    assert [round(r.distance_meters) for r in results] == [500, 1500]


def test_a_read_mask_returns_the_fields_it_names_and_star_returns_all(drivers):
    near = drivers.online(*north_of(500))

    (masked,) = masked_search(drivers, "display_name", "vehicle.make", "location")
    (whole,) = masked_search(drivers, "*")

    assert masked.driver == pb.Driver(
        display_name=near.display_name, vehicle=pb.Vehicle(make=near.vehicle.make), location=near.location
    )
    assert whole.driver == near


def test_a_read_mask_naming_no_field_of_driver_names_read_mask(drivers):
    request = pb.SearchDriversRequest(
        location=CENTER, radius_meters=5000, read_mask=field_mask_pb2.FieldMask(paths=["name", "fare"])
    )

    failure = drivers.fail(drivers.stub.SearchDrivers(request))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["read_mask"]
    assert "fare" in failure.message


def test_an_empty_area_returns_no_results(drivers):
    drivers.online()

    assert drivers.search(-33.86, 151.21, 50_000) == []


@pytest.mark.parametrize("radius", [-1.0, 50_000.5, math.inf, math.nan])
def test_a_radius_out_of_range_names_radius_meters(drivers, radius):
    failure = drivers.fail(
        drivers.stub.SearchDrivers(pb.SearchDriversRequest(location=CENTER, radius_meters=radius))
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["radius_meters"]


def test_search_needs_a_location_and_a_radius(drivers):
    failure = drivers.fail(drivers.stub.SearchDrivers(pb.SearchDriversRequest()))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["location", "radius_meters"]


def test_a_search_location_off_the_globe_is_invalid_location(drivers):
    request = pb.SearchDriversRequest(location={"latitude": 95, "longitude": 0}, radius_meters=10)

    failure = drivers.fail(drivers.stub.SearchDrivers(request))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "INVALID_LOCATION"
    assert failure.fields == ["location.latitude"]


def test_a_negative_page_size_is_refused(drivers):
    request = pb.SearchDriversRequest(location=CENTER, radius_meters=10, page_size=-1)

    assert drivers.fail(drivers.stub.SearchDrivers(request)).fields == ["page_size"]


def test_drivers_at_the_same_distance_come_in_the_order_they_registered(drivers):
    tied = [drivers.online(*north_of(700)).name for _ in range(4)]
    nearer = drivers.online(*north_of(300)).name

    results = drivers.search(CENTER.latitude, CENTER.longitude, 5000, 3)

    assert [r.driver.name for r in results] == [nearer, *tied[:2]]


def test_many_drivers_in_one_cell_are_found_nearest_first(drivers):
    # Within a few meters of each other: one grid cell (geo.CELLS_PER_DEGREE) holds them all.
    places = [north_of(40 + 0.5 * i) for i in range(30)]
    names = [drivers.online(*place).name for place in reversed(places)][::-1]

    results = drivers.search(CENTER.latitude, CENTER.longitude, 1000, 12)

    assert len({geo.cell_of(*place) for place in places}) == 1
    assert [r.driver.name for r in results] == names[:12]
    assert [round(r.distance_meters, 3) for r in results] == [40 + 0.5 * i for i in range(12)]
