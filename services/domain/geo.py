"""Places on Earth: validating a `google.type.LatLng`, distances, and search boxes.

Every service that takes a location validates it here, so a bad one is always
the same INVALID_ARGUMENT: reason INVALID_LOCATION, a field violation per bad
coordinate naming its path (`pickup.latitude`). Distances are great-circle
(haversine) distances on a sphere of the Earth's mean radius: within 0.5% of
the ellipsoid, which is plenty for matching drivers and quoting fares.

`bounding_box` gives the latitude/longitude ranges that contain every point
within a radius, so a store can prefilter with an indexed range query and
compute exact distances only for the few rows inside the box.
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
