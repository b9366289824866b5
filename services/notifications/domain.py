"""The notification rules: what a valid notification is and how it is named."""

from __future__ import annotations

import re

from rideshare.notifications.v1.notifications_pb2 import Notification

from services.runtime.aip import check_batch_size, new_id, now
from services.runtime.errors import FieldViolation, InvalidArgument

MAX_TITLE = 100
MAX_BODY = 1000
_CONTROL = re.compile(r"[\x00-\x1f]")
"""Control characters: none in a title."""
_BODY_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
"""Control characters but line breaks and tabs: none in a body (a regex: 0.8 us for a trip's
126-character body, where a loop over its characters in Python took 6.7 us)."""


def _violation(value: str, field: str, limit: int, control: re.Pattern[str]) -> FieldViolation | None:
    if not value.strip():
        return FieldViolation(field, "must not be blank")
    if len(value) > limit or control.search(value):
        return FieldViolation(field, f"must be 1 to {limit} printable characters")
    return None


def check_content(notification: Notification, prefix: str) -> None:
    """Every violation of the title and body, at once (the recipient's shape is checked by the contract)."""
    found = [
        _violation(notification.title, f"{prefix}.title", MAX_TITLE, _CONTROL),
        _violation(notification.body, f"{prefix}.body", MAX_BODY, _BODY_CONTROL),
    ]
    violations = [v for v in found if v is not None]
    if violations:
        raise InvalidArgument(violations)


def new_notification(draft: Notification, prefix: str = "notification") -> Notification:
    """A notification from the client's draft, named under its recipient; output fields ignored."""
    check_content(draft, prefix)
    return Notification(
        name=f"{draft.recipient}/notifications/{new_id()}",
        recipient=draft.recipient,
        title=draft.title.strip(),
        body=draft.body.strip(),
        trip=draft.trip,
        create_time=now(),
    )


def new_batch(drafts: list[Notification]) -> list[Notification]:
    """Each draft as `new_notification` makes it; every bad entry's violations at once, named by index."""
    check_batch_size(len(drafts))
    made: list[Notification] = []
    violations: list[FieldViolation] = []
    for index, draft in enumerate(drafts):
        try:
            made.append(new_notification(draft, f"requests[{index}].notification"))
        except InvalidArgument as error:
            violations.extend(error.violations)
    if violations:
        raise InvalidArgument(violations)
    return made
