"""The driver rules: a valid profile, the status machine, and what a search may ask for.

    OFFLINE --GoOnline--> AVAILABLE --AssignNearestDriver--> ON_TRIP --ReleaseTrip--> AVAILABLE
    AVAILABLE --GoOffline--> OFFLINE
    ON_TRIP --GoOffline--> ON_TRIP, offline_after_trip --ReleaseTrip--> OFFLINE
    (GoOnline on a trip clears offline_after_trip)

Each transition is a pure function from the stored driver to the new one (or
a FAILED_PRECONDITION naming the reason from the contract); the store runs it
inside the transaction that read the row, so check and write are one step.
A transition that changes nothing returns the driver as it was, untouched
update_time included, which is what makes ReleaseTrip and GoOffline safe to
repeat. Assignment is the store's (`DriverStore.assign_nearest`): it picks the
driver and changes it in one conditional write, so that two replicas racing
for one driver cannot both take it.
"""

from __future__ import annotations

import math
from typing import Any

from google.type.latlng_pb2 import LatLng
from rideshare.drivers.v1.drivers_pb2 import (
    DRIVER_STATUS_AVAILABLE,
    DRIVER_STATUS_OFFLINE,
    DRIVER_STATUS_ON_TRIP,
    CreateDriverRequest,
    Driver,
    DriverStatus,
    UpdateDriverRequest,
)

from services.domain import geo
from services.domain.contact import email_violation
from services.runtime.aip import apply_update_mask, new_id, now
from services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument
from services.runtime.sessions import password_violation

UPDATABLE = ("display_name", "vehicle", "email")
MAX_DISPLAY_NAME = 100
_VEHICLE_LIMITS = (("make", 100), ("model", 100), ("license_plate", 20))

MAX_RADIUS_METERS = 50_000.0
DEFAULT_SEARCH_SIZE = 10
MAX_SEARCH_SIZE = 100


def _text_violation(value: str, field: str, limit: int) -> FieldViolation | None:
    if not value.strip():
        return FieldViolation(field, "must not be blank")
    if len(value) > limit or any(ord(c) < 32 for c in value):
        return FieldViolation(field, f"must be 1 to {limit} printable characters")
    return None


def check_profile(driver: Driver, prefix: str, password: bool = False) -> None:
    """Every field violation of a driver's profile (and of its password, with `password`), at once."""
    found = [_text_violation(driver.display_name, f"{prefix}.display_name", MAX_DISPLAY_NAME)]
    if not driver.HasField("vehicle"):
        found.append(FieldViolation(f"{prefix}.vehicle", "is required"))
    else:
        for field, limit in _VEHICLE_LIMITS:
            found.append(_text_violation(getattr(driver.vehicle, field), f"{prefix}.vehicle.{field}", limit))
    if driver.email:
        found.append(email_violation(driver.email, f"{prefix}.email"))
    if password and driver.password:
        found.append(password_violation(driver.password, f"{prefix}.password"))
        if not driver.email:
            found.append(
                FieldViolation(f"{prefix}.email", "is required with a password: it signs in with both")
            )
    violations = [v for v in found if v is not None]
    if violations:
        raise InvalidArgument(violations)


def _tidy(driver: Driver) -> None:
    driver.display_name = driver.display_name.strip()
    for field, _ in _VEHICLE_LIMITS:
        setattr(driver.vehicle, field, getattr(driver.vehicle, field).strip())


def new_driver(draft: Driver) -> Driver:
    """A new OFFLINE driver from the client's draft: fresh name and times, output and input-only
    fields (the password) left out."""
    check_profile(draft, "driver", password=True)
    stamp = now()
    driver = Driver(
        name=f"drivers/{new_id()}",
        display_name=draft.display_name,
        vehicle=draft.vehicle,
        email=draft.email,
        status=DRIVER_STATUS_OFFLINE,
        create_time=stamp,
        update_time=stamp,
    )
    _tidy(driver)
    return driver


def updated_driver(current: Driver, request: UpdateDriverRequest) -> Driver:
    """`current` with the masked profile fields of the request applied, still a valid profile."""
    changed = _copy(current)
    apply_update_mask(changed, request.driver, request.update_mask, UPDATABLE, "driver")
    check_profile(changed, "driver")
    _tidy(changed)
    changed.update_time.CopyFrom(now())
    return changed


def without_password(request: CreateDriverRequest) -> CreateDriverRequest:
    """The request as kept for its request_id: a fast digest of a password is no place for it."""
    kept = CreateDriverRequest()
    kept.CopyFrom(request)
    kept.driver.ClearField("password")
    return kept


def _copy(driver: Driver) -> Driver:
    copy = Driver()
    copy.CopyFrom(driver)
    return copy


def _status_name(status: DriverStatus.ValueType) -> str:
    return str(DriverStatus.Name(status))


def _refuse(driver: Driver, reason: str, message: str, **metadata: str) -> FailedPrecondition:
    return FailedPrecondition(
        message,
        reason=reason,
        metadata={"name": driver.name, "status": _status_name(driver.status), **metadata},
    )


def _moved(driver: Driver, location: LatLng) -> Driver:
    stamp = now()
    changed = _copy(driver)
    changed.location.CopyFrom(location)
    changed.location_update_time.CopyFrom(stamp)
    changed.update_time.CopyFrom(stamp)
    return changed


def go_online(driver: Driver, location: LatLng) -> Driver:
    """OFFLINE becomes AVAILABLE at `location`; an online driver keeps its status and only moves
    (and one on a trip who had asked to go offline after it stays online)."""
    changed = _moved(driver, location)
    if driver.status == DRIVER_STATUS_OFFLINE:
        changed.status = DRIVER_STATUS_AVAILABLE
    changed.offline_after_trip = False
    return changed


def go_offline(driver: Driver) -> Driver:
    """AVAILABLE becomes OFFLINE (keeping its last location); ON_TRIP goes OFFLINE when the trip
    ends (`offline_after_trip`); OFFLINE, or already going, stays as it is."""
    if driver.status == DRIVER_STATUS_OFFLINE or driver.offline_after_trip:
        return driver
    changed = _copy(driver)
    if driver.status == DRIVER_STATUS_ON_TRIP:
        changed.offline_after_trip = True
    else:
        changed.status = DRIVER_STATUS_OFFLINE
    changed.update_time.CopyFrom(now())
    return changed


def update_location(driver: Driver, location: LatLng) -> Driver:
    """An online driver moves; an OFFLINE one must go online first."""
    if driver.status == DRIVER_STATUS_OFFLINE:
        raise _refuse(driver, "DRIVER_OFFLINE", f"{driver.name} is offline; GoOnline sets its location")
    return _moved(driver, location)


def release_trip(driver: Driver, trip: str) -> Driver:
    """ON_TRIP for `trip` becomes AVAILABLE (OFFLINE if it asked to go offline during the trip); a
    driver on no trip is unchanged; another trip is refused."""
    if driver.status != DRIVER_STATUS_ON_TRIP:
        return driver
    if driver.current_trip != trip:
        raise _refuse(
            driver,
            "DRIVER_ON_ANOTHER_TRIP",
            f"{driver.name} is on {driver.current_trip}, not {trip}",
            trip=trip,
            current_trip=driver.current_trip,
        )
    changed = _copy(driver)
    changed.status = DRIVER_STATUS_OFFLINE if driver.offline_after_trip else DRIVER_STATUS_AVAILABLE
    changed.current_trip = ""
    changed.offline_after_trip = False
    changed.update_time.CopyFrom(now())
    return changed


def check_deletable(driver: Driver) -> None:
    if driver.status == DRIVER_STATUS_ON_TRIP:
        raise _refuse(
            driver,
            "DRIVER_ON_TRIP",
            f"{driver.name} is on {driver.current_trip} and cannot be deleted until it ends",
            current_trip=driver.current_trip,
        )


def check_location(location: LatLng, field: str = "location") -> None:
    geo.check_latlng((location, field))


def check_area(location: Any, radius_meters: float, field: str = "location") -> None:
    """A place to search around and how far: INVALID_ARGUMENT naming each bad field, at once."""
    violations = geo.latlng_violations(location, field)
    if not (math.isfinite(radius_meters) and 0 < radius_meters <= MAX_RADIUS_METERS):
        violations.append(
            FieldViolation(
                "radius_meters",
                f"must be greater than 0 and at most {MAX_RADIUS_METERS:g}, got {radius_meters!r}",
            )
        )
    if violations:
        bad_location = any(v.field.startswith(f"{field}.") for v in violations)
        raise InvalidArgument(violations, reason=geo.INVALID_LOCATION if bad_location else None)


def search_limits(location: Any, radius_meters: float, page_size: int) -> int:
    """Validate a search; returns how many drivers it may return (the contract's page_size rules)."""
    check_area(location, radius_meters)
    if page_size <= 0:
        return DEFAULT_SEARCH_SIZE
    return min(page_size, MAX_SEARCH_SIZE)


def no_driver_available(pickup: LatLng) -> FailedPrecondition:
    """No AVAILABLE driver within the radius of `pickup` (the trip service passes it on as it is)."""
    return FailedPrecondition(
        "no driver is available near the pickup; try again in a moment",
        reason="NO_DRIVER_AVAILABLE",
        metadata={"latitude": f"{pickup.latitude:.6f}", "longitude": f"{pickup.longitude:.6f}"},
    )
