"""Places on Earth: validating a `google.type.LatLng`, distances, and search boxes.

Every service that takes a location validates it here, so a bad one is always
the same INVALID_ARGUMENT: reason INVALID_LOCATION, a field violation per bad
coordinate naming its path (`pickup.latitude`). Distances are great-circle
(haversine) distances on a sphere of the Earth's mean radius: within 0.5% of
the ellipsoid, which is plenty for matching drivers and quoting fares.

`bounding_box` gives the latitude/longitude ranges that contain every point
within a radius. `cell_of` puts a point in a grid cell (an integer a store
can index) and `cell_window` gives the cells around a point that hold every
point within a distance of it, with how far a flat (equirectangular) distance
estimate may overstate the great-circle distance there; together they let a
store find the nearest points with one indexed query per widening window,
sorted by the estimate in SQL, and compute exact distances only for the few
rows it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from services.runtime.errors import FieldViolation, InvalidArgument

#: The Earth's mean radius (IUGG), in meters.
EARTH_RADIUS_METERS = 6_371_008.8

INVALID_LOCATION = "INVALID_LOCATION"

#: Widens a box by about a millimetre so float rounding never excludes a point on its edge.
_EDGE_DEGREES = 1e-8

#: Grid cells are 1/500 of a degree on each side: ~222 m north-south, that times cos(latitude) east-west.
CELLS_PER_DEGREE = 500
#: Cells per band of latitude: the columns of longitude -180 to 180, both ends included.
CELL_COLUMNS = 360 * CELLS_PER_DEGREE + 1
METERS_PER_DEGREE = EARTH_RADIUS_METERS * math.pi / 180


class Point(Protocol):
    """Anything with degrees of latitude and longitude: a `LatLng`, a row, a test double."""

    @property
    def latitude(self) -> float: ...

    @property
    def longitude(self) -> float: ...


def latlng_violations(point: Any, field: str) -> list[FieldViolation]:
    """What is wrong with `point` (a `LatLng`), each violation naming `field.latitude`/`.longitude`."""
    violations = []
    for axis, limit in (("latitude", 90.0), ("longitude", 180.0)):
        value = getattr(point, axis)
        if not (math.isfinite(value) and -limit <= value <= limit):
            violations.append(
                FieldViolation(
                    f"{field}.{axis}",
                    f"must be a number of degrees in [-{limit:g}, {limit:g}], got {value!r}",
                    INVALID_LOCATION,
                )
            )
    return violations


def check_latlng(*points: tuple[Any, str]) -> None:
    """Raise INVALID_ARGUMENT (reason INVALID_LOCATION) naming every bad coordinate of `(point, field)` pairs.

    `check_latlng((request.pickup, "pickup"), (request.dropoff, "dropoff"))`.
    """
    violations = [v for point, field in points for v in latlng_violations(point, field)]
    if violations:
        raise InvalidArgument(violations, reason=INVALID_LOCATION)


def haversine_meters(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """The great-circle distance between two points given in degrees."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    d_phi = phi2 - phi1
    d_lambda = math.radians(lng2 - lng1)
    h = math.sin(d_phi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(d_lambda / 2) ** 2
    return 2 * EARTH_RADIUS_METERS * math.asin(min(1.0, math.sqrt(h)))


def distance_meters(a: Point, b: Point) -> float:
    """The great-circle distance between two points, in meters."""
    return haversine_meters(a.latitude, a.longitude, b.latitude, b.longitude)


@dataclass(frozen=True)
class BoundingBox:
    """Degree ranges that contain every point within a radius of a center.

    Longitude is one range, or two when the box crosses the antimeridian
    (a point matches if it is in either); near a pole it is the whole circle.
    """

    min_latitude: float
    max_latitude: float
    longitude_ranges: tuple[tuple[float, float], ...]

    def contains(self, latitude: float, longitude: float) -> bool:
        return self.min_latitude <= latitude <= self.max_latitude and any(
            low <= longitude <= high for low, high in self.longitude_ranges
        )


def bounding_box(center: Point, radius_meters: float) -> BoundingBox:
    """The smallest latitude/longitude box holding the circle around `center` (radius < half the Earth).

    The longitude half-width is asin(sin(r) / cos(lat)) for the angular radius r,
    the exact extent of a circle on the sphere (J. Matuschek, "Finding points
    within a distance of a latitude/longitude using bounding coordinates").
    """
    angular = radius_meters / EARTH_RADIUS_METERS
    lat = math.radians(center.latitude)
    min_lat = math.degrees(lat - angular) - _EDGE_DEGREES
    max_lat = math.degrees(lat + angular) + _EDGE_DEGREES
    if min_lat <= -90.0 or max_lat >= 90.0:
        # The circle holds a pole: every longitude is within reach.
        return BoundingBox(max(min_lat, -90.0), min(max_lat, 90.0), ((-180.0, 180.0),))
    half_width = math.degrees(math.asin(min(1.0, math.sin(angular) / math.cos(lat)))) + _EDGE_DEGREES
    west = center.longitude - half_width
    east = center.longitude + half_width
    if half_width >= 180.0:
        ranges: tuple[tuple[float, float], ...] = ((-180.0, 180.0),)
    elif west < -180.0:
        ranges = ((west + 360.0, 180.0), (-180.0, east))
    elif east > 180.0:
        ranges = ((west, 180.0), (-180.0, east - 360.0))
    else:
        ranges = ((west, east),)
    return BoundingBox(min_lat, max_lat, ranges)


def cell_of(latitude: float, longitude: float) -> int:
    """The grid cell of a point: its band of latitude (counted from -90) * CELL_COLUMNS + its column of
    longitude (counted from -180).

    One addition, one multiplication by an integer and the truncation of a
    number that is never negative, so SQL computes the same cell bit for bit:
    `CAST((latitude + 90.0) * 500 AS INTEGER) * 180001 + CAST((longitude + 180.0) * 500 AS INTEGER)`.
    """
    return int((latitude + 90.0) * CELLS_PER_DEGREE) * CELL_COLUMNS + int(
        (longitude + 180.0) * CELLS_PER_DEGREE
    )


@dataclass(frozen=True)
class CellWindow:
    """The grid cells that hold every point within `reach` meters of a center.

    `ranges` are inclusive ranges of cell ids, ascending: one per band of
    latitude, merged where they meet (whole bands around a pole become one range;
    across the antimeridian a band's east end joins the next band's west end).
    `stretch` bounds, for any point in these cells, how many times its flat
    distance (`flat_meters`) can exceed its great-circle distance: a point whose
    flat distance is at least F is at least F / stretch away.
    """

    reach: float
    ranges: tuple[tuple[int, int], ...]
    stretch: float


def cell_window(center: Point, reach: float) -> CellWindow:
    """The cells covering `bounding_box(center, reach)`."""
    box = bounding_box(center, reach)
    south = int((box.min_latitude + 90.0) * CELLS_PER_DEGREE)
    north = int((box.max_latitude + 90.0) * CELLS_PER_DEGREE)
    columns = sorted(
        (int((west + 180.0) * CELLS_PER_DEGREE), int((east + 180.0) * CELLS_PER_DEGREE))
        for west, east in box.longitude_ranges
    )
    ranges: list[tuple[int, int]] = []
    for band in range(south, north + 1):
        for first, last in columns:
            low, high = band * CELL_COLUMNS + first, band * CELL_COLUMNS + last
            if ranges and ranges[-1][1] + 1 == low:
                ranges[-1] = (ranges[-1][0], high)
            else:
                ranges.append((low, high))
    return CellWindow(reach, tuple(ranges), _stretch(center, box, south, north))


def _stretch(center: Point, box: BoundingBox, south: int, north: int) -> float:
    """How many times the flat distance can exceed the great-circle one in the cells of `box`.

    The flat distance is sqrt(dlat^2 + (c0 dlng)^2) with c0 = cos(center latitude);
    haversine gives d >= sqrt(dlat^2 + c0 c1 dlng^2) (1 - D^2 / 24) for a point at
    latitude with cosine c1 and angular offsets up to D (sin x >= x (1 - x^2 / 6)).
    Their ratio is at most sqrt(max(1, c0 / c1)) / (1 - D^2 / 24); c1 is smallest
    at an edge of the cells' latitudes, and infinite stretch (no bound) where the
    cells reach a pole.
    """
    low = math.radians(south / CELLS_PER_DEGREE - 90.0)
    high = math.radians((north + 1) / CELLS_PER_DEGREE - 90.0)
    smallest = min(math.cos(low), math.cos(high))
    if high >= math.pi / 2 or low <= -math.pi / 2 or smallest <= 0.0:
        return math.inf
    latitude = math.radians(center.latitude)
    if len(box.longitude_ranges) == 1 and box.longitude_ranges[0] == (-180.0, 180.0):
        across = math.pi
    else:
        offsets = (abs(bound - center.longitude) for pair in box.longitude_ranges for bound in pair)
        widest = max(min(offset, 360.0 - offset) for offset in offsets)
        across = math.radians(min(180.0, widest + 1.0 / CELLS_PER_DEGREE))
    offset = max(latitude - low, high - latitude, across)
    return math.sqrt(max(1.0, math.cos(latitude) / smallest)) / (1.0 - offset**2 / 24.0) * (1.0 + 1e-9)


def flat_meters(squared_degrees: float) -> float:
    """Meters of a flat distance given as dlat^2 + (cos(center latitude) * dlng)^2, in degrees."""
    return math.sqrt(squared_degrees) * METERS_PER_DEGREE
