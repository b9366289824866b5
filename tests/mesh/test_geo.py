"""LatLng validation, great-circle distances and search boxes."""

from __future__ import annotations

import math
import random

import pytest
from google.type import latlng_pb2

from services.domain import geo
from services.runtime.errors import InvalidArgument


def point(latitude: float, longitude: float) -> latlng_pb2.LatLng:
    return latlng_pb2.LatLng(latitude=latitude, longitude=longitude)


@pytest.mark.parametrize("where", [point(0, 0), point(90, 180), point(-90, -180), point(51.5, -0.12)])
def test_places_on_the_globe_are_valid(where):
    assert geo.latlng_violations(where, "pickup") == []
    geo.check_latlng((where, "pickup"))


@pytest.mark.parametrize(
    ("where", "fields"),
    [
        (point(90.000001, 0), ["pickup.latitude"]),
        (point(0, -180.000001), ["pickup.longitude"]),
        (point(math.nan, 0), ["pickup.latitude"]),
        (point(0, math.inf), ["pickup.longitude"]),
        (point(-1000, 1000), ["pickup.latitude", "pickup.longitude"]),
    ],
)
def test_places_off_the_globe_name_each_bad_coordinate(where, fields):
    violations = geo.latlng_violations(where, "pickup")

    assert [v.field for v in violations] == fields
    assert {v.reason for v in violations} == {"INVALID_LOCATION"}
    assert "[-90, 90]" in violations[0].description or "[-180, 180]" in violations[0].description


def test_check_reports_every_bad_point_at_once_as_invalid_location():
    with pytest.raises(InvalidArgument) as caught:
        geo.check_latlng(
            (point(91, 0), "trip.pickup"), (point(0, 0), "trip.via"), (point(0, 181), "trip.dropoff")
        )

    assert caught.value.reason == "INVALID_LOCATION"
    assert [v.field for v in caught.value.violations] == ["trip.pickup.latitude", "trip.dropoff.longitude"]


def test_distances_on_the_sphere():
    one_degree = geo.EARTH_RADIUS_METERS * math.pi / 180

    assert geo.distance_meters(point(0, 0), point(0, 1)) == pytest.approx(one_degree)
    assert geo.distance_meters(point(10, 20), point(11, 20)) == pytest.approx(one_degree)
    assert geo.distance_meters(point(90, 0), point(-90, 0)) == pytest.approx(
        math.pi * geo.EARTH_RADIUS_METERS
    )
    assert geo.distance_meters(point(0, 179.5), point(0, -179.5)) == pytest.approx(one_degree)
    assert geo.distance_meters(point(48.8566, 2.3522), point(48.8566, 2.3522)) == 0
    # London to Paris, about 344 km as the crow flies.
    assert geo.distance_meters(point(51.5074, -0.1278), point(48.8566, 2.3522)) == pytest.approx(
        343_560, rel=1e-3
    )


def destination(start: latlng_pb2.LatLng, bearing: float, meters: float) -> latlng_pb2.LatLng:
    """The point `meters` from `start` along the great circle leaving it at `bearing` radians."""
    angular = meters / geo.EARTH_RADIUS_METERS
    lat1, lng1 = math.radians(start.latitude), math.radians(start.longitude)
    lat2 = math.asin(
        math.sin(lat1) * math.cos(angular) + math.cos(lat1) * math.sin(angular) * math.cos(bearing)
    )
    lng2 = lng1 + math.atan2(
        math.sin(bearing) * math.sin(angular) * math.cos(lat1),
        math.cos(angular) - math.sin(lat1) * math.sin(lat2),
    )
    longitude = (math.degrees(lng2) + 540) % 360 - 180
    return point(math.degrees(lat2), longitude)


@pytest.mark.parametrize(
    "center",
    [
        point(51.5, -0.12),
        point(0, 0),
        point(-33.9, 151.2),
        point(0, 179.99),
        point(10, -179.995),
        point(89.99, 5),
    ],
)
@pytest.mark.parametrize("radius", [1.0, 5000.0, 50_000.0])
def test_the_box_holds_every_point_within_the_radius(center, radius):
    box = geo.bounding_box(center, radius)
    rng = random.Random(f"{center.latitude},{center.longitude},{radius}")

    for _ in range(500):
        inside = destination(center, rng.uniform(0, 2 * math.pi), radius * math.sqrt(rng.random()))
        assert box.contains(inside.latitude, inside.longitude), inside
    for step in range(64):
        edge = destination(center, 2 * math.pi * step / 64, radius)
        assert box.contains(edge.latitude, edge.longitude), edge


def test_the_box_is_tight_away_from_the_poles():
    box = geo.bounding_box(point(51.5, -0.12), 5000)

    assert box.max_latitude - box.min_latitude == pytest.approx(2 * 5000 / 111_195, rel=1e-3)
    ((west, east),) = box.longitude_ranges
    assert east - west == pytest.approx(2 * 5000 / (111_195 * math.cos(math.radians(51.5))), rel=1e-2)
    assert not box.contains(51.5, -0.12 + 0.1)


def test_a_box_across_the_antimeridian_is_two_longitude_ranges():
    box = geo.bounding_box(point(0, 179.99), 5000)

    assert len(box.longitude_ranges) == 2
    assert box.contains(0, -179.99)
    assert box.contains(0, 179.98)
    assert not box.contains(0, 0)


def test_a_box_around_a_pole_spans_every_longitude():
    box = geo.bounding_box(point(89.99, 5), 5000)

    assert box.longitude_ranges == ((-180.0, 180.0),)
    assert box.max_latitude == 90.0


CENTERS = [
    point(51.5, -0.12),
    point(0, 0),
    point(0, 179.99),
    point(10, -179.995),
    point(89.99, 5),
    point(-89.9, 0),
]


def _in_window(window: geo.CellWindow, where: latlng_pb2.LatLng) -> bool:
    cell = geo.cell_of(where.latitude, where.longitude)
    return any(low <= cell <= high for low, high in window.ranges)


def _flat_meters(center: latlng_pb2.LatLng, where: latlng_pb2.LatLng) -> float:
    """The flat distance the drivers' search query computes in SQL."""
    east = (where.longitude - center.longitude + 540) % 360 - 180
    dlat = where.latitude - center.latitude
    return geo.flat_meters(dlat * dlat + math.cos(math.radians(center.latitude)) ** 2 * east * east)


@pytest.mark.parametrize("center", CENTERS)
@pytest.mark.parametrize("reach", [1.0, 250.0, 5000.0, 50_000.0])
def test_a_cell_window_holds_every_point_within_its_reach(center, reach):
    window = geo.cell_window(center, reach)
    rng = random.Random(f"{center.latitude},{center.longitude},{reach}")

    for _ in range(300):
        inside = destination(center, rng.uniform(0, 2 * math.pi), reach * math.sqrt(rng.random()))
        assert _in_window(window, inside), inside
    for step in range(64):
        assert _in_window(window, destination(center, 2 * math.pi * step / 64, reach))
    assert window.ranges == tuple(sorted(window.ranges))


@pytest.mark.parametrize("center", CENTERS)
@pytest.mark.parametrize("reach", [250.0, 5000.0, 50_000.0])
def test_the_flat_distance_overstates_a_great_circle_distance_at_most_by_the_stretch(center, reach):
    window = geo.cell_window(center, reach)
    rng = random.Random(f"stretch {center.latitude},{center.longitude},{reach}")

    for _ in range(300):
        # As far as the window's cells go: up to a cell beyond the reach.
        where = destination(center, rng.uniform(0, 2 * math.pi), (reach + 300) * math.sqrt(rng.random()))
        if _in_window(window, where) and where != center:
            assert _flat_meters(center, where) <= window.stretch * geo.distance_meters(center, where)


def test_the_stretch_is_small_in_a_city_and_unbounded_at_a_pole():
    assert 1 < geo.cell_window(point(51.5, -0.12), 5000).stretch < 1.001
    assert geo.cell_window(point(89.99, 5), 5000).stretch == math.inf


def test_whole_bands_around_a_pole_are_one_range_and_across_the_antimeridian_bands_join():
    assert len(geo.cell_window(point(89.99, 5), 5000).ranges) == 1
    across = geo.cell_window(point(0, 179.99), 2000)
    bands = {cell // geo.CELL_COLUMNS for cells in across.ranges for cell in cells}
    # One range from each band's east end to the next band's west end, and the two ends.
    assert len(across.ranges) == len(bands) + 1


@pytest.mark.parametrize(
    ("latitude", "longitude", "cell"),
    [(-90, -180, 0), (-90, 180, 180_000), (90, -180, 90_000 * 180_001), (0, 0, 45_000 * 180_001 + 90_000)],
)
def test_cells_are_counted_from_the_south_pole_and_the_antimeridian(latitude, longitude, cell):
    assert geo.cell_of(latitude, longitude) == cell
