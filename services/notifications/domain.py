"""The notification rules: what a valid notification is and how it is named."""

from __future__ import annotations

from rideshare.notifications.v1.notifications_pb2 import Notification

from services.runtime.aip import new_id, now
from services.runtime.errors import FieldViolation, InvalidArgument

MAX_TITLE = 100
MAX_BODY = 1000
#: Line breaks and tabs are fine in a body; other control characters are not.
_BODY_WHITESPACE = frozenset("\n\r\t")


def _violation(value: str, field: str, limit: int, allowed: frozenset[str]) -> FieldViolation | None:
    if not value.strip():
        return FieldViolation(field, "must not be blank")
    if len(value) > limit or any(ord(c) < 32 and c not in allowed for c in value):
        return FieldViolation(field, f"must be 1 to {limit} printable characters")
    return None


MAX_BATCH = 100
"""The most notifications one BatchSendNotifications stores."""


def check_content(notification: Notification, prefix: str) -> None:
    """Every violation of the title and body, at once (the recipient's shape is checked by the contract)."""
    found = [
        _violation(notification.title, f"{prefix}.title", MAX_TITLE, frozenset()),
        _violation(notification.body, f"{prefix}.body", MAX_BODY, _BODY_WHITESPACE),
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
    if not drafts:
        raise InvalidArgument.field("requests", "is required")
    if len(drafts) > MAX_BATCH:
        raise InvalidArgument.field("requests", f"must hold at most {MAX_BATCH} requests, not {len(drafts)}")
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
