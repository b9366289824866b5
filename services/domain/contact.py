"""How people are reached and sign in: what a valid email address is (passengers and drivers share it)."""

from __future__ import annotations

import re

from services.runtime.errors import FieldViolation

MAX_EMAIL = 254
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s.]+$")


def email_violation(email: str, field: str) -> FieldViolation | None:
    """Why `email` is not an address, on `field`; None if it is one."""
    if _EMAIL.match(email) and len(email) <= MAX_EMAIL:
        return None
    return FieldViolation(field, f"{email!r} is not an email address")
