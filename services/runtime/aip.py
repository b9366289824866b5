"""Helpers for the API Improvement Proposals every service follows.

Resource ids and names (AIP-122), page tokens (AIP-158), update masks
(AIP-134), read masks (AIP-157), output-only fields (AIP-203) and timestamps, so each service
writes only its own rules.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Iterable
from typing import Any, TypeVar, cast

from google.api import field_behavior_pb2
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from .errors import InvalidArgument

M = TypeVar("M", bound=Message)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def new_id() -> str:
    """A fresh resource id: 32 lowercase hex characters, safe in URLs and names."""
    return uuid.uuid4().hex


def resource_id(name: str, collection: str, field: str = "name") -> str:
    """`passengers/abc` -> `abc`; the contract validator has already checked the shape."""
    prefix = collection + "/"
    if not name.startswith(prefix) or "/" in name[len(prefix) :] or len(name) == len(prefix):
        raise InvalidArgument.field(
            field, f'{name!r} is not a resource name of the form "{collection}/{{id}}"'
        )
    return name[len(prefix) :]


def page_size(requested: int) -> int:
    """0 means the default; above the maximum is coerced down (AIP-158)."""
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


MAX_BATCH = 100
"""The most requests one batch method (AIP-233) takes."""


def check_batch_size(count: int) -> None:
    """A batch holds 1 to MAX_BATCH requests, in its `requests` field (the validator also refuses
    none, as REQUIRED; this is for the handler, which sees every request)."""
    if not count:
        raise InvalidArgument.field("requests", "is required")
    if count > MAX_BATCH:
        raise InvalidArgument.field("requests", f"must hold at most {MAX_BATCH} requests, not {count}")


def encode_page_token(position: Any, query: dict[str, Any] | None = None) -> str:
    """An opaque token for 'continue after `position`' of this exact query."""
    payload = json.dumps({"p": position, "q": query or {}}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str, query: dict[str, Any] | None = None, kind: type = object) -> Any:
    """The position inside `token`, or INVALID_ARGUMENT if it is forged or for another query."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position = payload["p"]
        if not isinstance(position, kind) or isinstance(position, bool):
            raise TypeError(position)
        same_query = payload.get("q", {}) == (query or {})
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument.field("page_token", "is not a token this API returned") from None
    if not same_query:
        raise InvalidArgument.field("page_token", "belongs to a list request with different filters")
    return position


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def timestamp_from_ns(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def apply_update_mask(
    target: Message,
    patch: Message,
    mask: field_mask_pb2.FieldMask,
    updatable: Iterable[str],
    field_prefix: str,
) -> list[str]:
    """Copy the masked fields of `patch` onto `target`; returns the paths applied.

    An empty mask means every updatable field that `patch` sets (AIP-134). A
    path outside `updatable` is INVALID_ARGUMENT on `update_mask`.
    """
    allowed = set(updatable)
    if mask.paths:
        paths = list(dict.fromkeys(mask.paths))
        if "*" in paths:
            paths = sorted(allowed)
        unknown = [p for p in paths if p not in allowed]
        if unknown:
            raise InvalidArgument.field(
                "update_mask",
                f"cannot update {', '.join(unknown)}; updatable fields: {', '.join(sorted(allowed))}",
            )
    else:
        paths = [f.name for f, _ in patch.ListFields() if f.name in allowed]
        if not paths:
            raise InvalidArgument.field(
                field_prefix, f"sets no updatable field; updatable fields: {', '.join(sorted(allowed))}"
            )
    for path in paths:
        field = target.DESCRIPTOR.fields_by_name[path]
        if field.message_type is not None and not field.is_repeated:
            if patch.HasField(path):
                getattr(target, path).CopyFrom(getattr(patch, path))
            else:
                target.ClearField(path)
        elif field.is_repeated:
            del getattr(target, path)[:]
            getattr(target, path).extend(getattr(patch, path))
        else:
            setattr(target, path, getattr(patch, path))
    return paths


def read_mask_paths(mask: field_mask_pb2.FieldMask, resource: type[Message]) -> frozenset[str]:
    """The paths of a request's `read_mask` (AIP-157), each checked to name a field of the
    resource (INVALID_ARGUMENT on `read_mask` otherwise); empty, or `*`, means every field."""
    paths = frozenset(mask.paths)
    if "*" in paths:
        return frozenset()
    descriptor = cast(Descriptor, resource.DESCRIPTOR)  # the stubs add upb's twin of the type
    unknown = sorted(
        p for p in paths if not field_mask_pb2.FieldMask(paths=[p]).IsValidForDescriptor(descriptor)
    )
    if unknown:
        raise InvalidArgument.field(
            "read_mask", f"{', '.join(unknown)}: not a field of {resource.DESCRIPTOR.name}"
        )
    return paths


def apply_read_mask(message: M, paths: frozenset[str]) -> M:
    """The message with only the fields `paths` names (`read_mask_paths`; empty: all of it)."""
    if not paths:
        return message
    masked = type(message)()
    field_mask_pb2.FieldMask(paths=sorted(paths)).MergeMessage(message, masked)
    return masked


def without_output_only(message: M) -> M:
    """A copy of a request without what it may not set: every OUTPUT_ONLY field, at any depth (AIP-203).

    Such a field is ignored, not refused; clearing it before anything reads the
    request (the request_id digest included) makes sure nothing uses it: a
    server-computed amount sent by a caller changes neither the result nor what
    "the same request" means for a replay.
    """
    copy = type(message)()
    copy.CopyFrom(message)
    _clear_output_only(copy)
    return copy


def _clear_output_only(message: Message) -> None:
    for field, value in message.ListFields():
        if field_behavior_pb2.OUTPUT_ONLY in field.GetOptions().Extensions[field_behavior_pb2.field_behavior]:
            message.ClearField(field.name)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in value if field.is_repeated else (value,):
                _clear_output_only(item)
