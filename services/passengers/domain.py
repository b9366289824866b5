"""The passenger rules: what a valid profile is and how one changes."""

from __future__ import annotations

import re

from rideshare.passengers.v1.passengers_pb2 import CreatePassengerRequest, Passenger, UpdatePassengerRequest

from services.domain.contact import email_violation
from services.runtime.aip import apply_update_mask, new_id, now
from services.runtime.errors import FieldViolation, InvalidArgument
from services.runtime.sessions import password_violation

MAX_DISPLAY_NAME = 100
_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")
UPDATABLE = ("display_name", "email", "phone")


def check_profile(passenger: Passenger, prefix: str, password: bool = False) -> None:
    """Every field violation of a profile (and of its password, with `password`), at once."""
    violations = []
    display_name = passenger.display_name
    if not display_name.strip():
        violations.append(FieldViolation(f"{prefix}.display_name", "must not be blank"))
    elif len(display_name) > MAX_DISPLAY_NAME or any(ord(c) < 32 for c in display_name):
        violations.append(
            FieldViolation(f"{prefix}.display_name", f"must be 1 to {MAX_DISPLAY_NAME} printable characters")
        )
    if (bad_email := email_violation(passenger.email, f"{prefix}.email")) is not None:
        violations.append(bad_email)
    if passenger.phone and not _PHONE.match(passenger.phone):
        violations.append(
            FieldViolation(
                f"{prefix}.phone", f"{passenger.phone!r} is not an E.164 phone number like +447700900123"
            )
        )
    bad_password = password_violation(passenger.password, f"{prefix}.password") if password else None
    if bad_password is not None and passenger.password:
        violations.append(bad_password)
    if violations:
        raise InvalidArgument(violations)


def new_passenger(draft: Passenger) -> Passenger:
    """A new passenger from the client's draft: fresh name and times, output and input-only fields
    (the password) left out."""
    check_profile(draft, "passenger", password=True)
    stamp = now()
    return Passenger(
        name=f"passengers/{new_id()}",
        display_name=draft.display_name.strip(),
        email=draft.email,
        phone=draft.phone,
        create_time=stamp,
        update_time=stamp,
    )


def updated_passenger(current: Passenger, request: UpdatePassengerRequest) -> Passenger:
    """`current` with the masked fields of the request applied, still a valid profile."""
    changed = Passenger()
    changed.CopyFrom(current)
    apply_update_mask(changed, request.passenger, request.update_mask, UPDATABLE, "passenger")
    changed.display_name = changed.display_name.strip()
    check_profile(changed, "passenger")
    changed.update_time.CopyFrom(now())
    return changed


def without_password(request: CreatePassengerRequest) -> CreatePassengerRequest:
    """The request as kept for its request_id: a fast digest of a password is no place for it."""
    kept = CreatePassengerRequest()
    kept.CopyFrom(request)
    kept.passenger.ClearField("password")
    return kept
