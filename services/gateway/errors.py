"""Errors as HTTP sees them: the status of each gRPC code, and one JSON shape for every error.

    {"code": <gRPC code number>, "message": "...", "details": [{"@type": "...", ...}]}

An upstream's rich status (`grpc-status-details-bin`: ErrorInfo, BadRequest,
...) is passed through as the details; errors the bridge raises itself (no
route, bad JSON, too large, no API key) use the same shape with an ErrorInfo
in the domain `gateway.rideshare`.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from .transcode import BadRequest, dumps

DOMAIN = "gateway.rideshare"
_DETAILS_KEY = "grpc-status-details-bin"
_TYPE_PREFIX = "type.googleapis.com/"

#: The HTTP status of each gRPC code (as grpc-gateway, Envoy and Connect map them).
HTTP_STATUS: dict[int, int] = {
    0: 200,  # OK
    1: 499,  # CANCELLED
    2: 500,  # UNKNOWN
    3: 400,  # INVALID_ARGUMENT
    4: 504,  # DEADLINE_EXCEEDED
    5: 404,  # NOT_FOUND
    6: 409,  # ALREADY_EXISTS
    7: 403,  # PERMISSION_DENIED
    8: 429,  # RESOURCE_EXHAUSTED
    9: 400,  # FAILED_PRECONDITION
    10: 409,  # ABORTED
    11: 400,  # OUT_OF_RANGE
    12: 501,  # UNIMPLEMENTED
    13: 500,  # INTERNAL
    14: 503,  # UNAVAILABLE
    15: 500,  # DATA_LOSS
    16: 401,  # UNAUTHENTICATED
}


class HttpError(Exception):
    """An error response: HTTP status, gRPC code, message, details, and extra headers."""

    def __init__(
        self,
        status: int,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        details: Sequence[dict[str, Any]] = (),
        headers: Iterable[tuple[bytes, bytes]] = (),
        retry_after: int = 0,
    ) -> None:
        """`retry_after` (seconds, 0: none) makes it a refusal: the client may try again then."""
        super().__init__(message)
        self.status = status
        self.code = int(code.value[0])
        self.message = message
        self.details = list(details)
        self.reason = reason
        if reason is not None:
            self.details.insert(0, error_info(reason))
        self.headers = list(headers)
        if retry_after:
            self.headers.append((b"retry-after", str(retry_after).encode()))

    @property
    def refusal(self) -> bool:
        """A refusal by the gateway's limits (rate, in-flight calls, streams, connections): it says
        when to retry. These are counted, not logged one by one (limits.Refusals)."""
        return any(name == b"retry-after" for name, _ in self.headers)

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def encode(self) -> bytes:
        return dumps(self.body())


def error_info(reason: str, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "@type": _TYPE_PREFIX + "google.rpc.ErrorInfo",
        "reason": reason,
        "domain": DOMAIN,
    }
    if metadata:
        info["metadata"] = metadata
    return info


def bad_request(error: BadRequest) -> HttpError:
    """A request the bridge could not transcode: 400 with BadRequest.field_violations."""
    violations = [{"field": v.field, "description": v.description} for v in error.violations]
    return HttpError(
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        error.message,
        reason="INVALID_REQUEST",
        details=[{"@type": _TYPE_PREFIX + "google.rpc.BadRequest", "fieldViolations": violations}],
    )


def not_found(path: str) -> HttpError:
    return HttpError(404, grpc.StatusCode.NOT_FOUND, f"no route for {path}", reason="NO_ROUTE")


def method_not_allowed(method: str, allowed: Sequence[str]) -> HttpError:
    return HttpError(
        405,
        grpc.StatusCode.UNIMPLEMENTED,
        f"{method} is not allowed here; allowed: {', '.join(allowed)}",
        reason="METHOD_NOT_ALLOWED",
        headers=[(b"allow", ", ".join(allowed).encode())],
    )


def internal() -> tuple[str, HttpError]:
    """A new correlation id, and the 500 that quotes it (the log line carries the same id)."""
    correlation_id = uuid.uuid4().hex[:16]
    return correlation_id, HttpError(
        500,
        grpc.StatusCode.INTERNAL,
        f"internal error; quote correlation id {correlation_id} when reporting it",
        reason="INTERNAL",
    )


def from_status(code: grpc.StatusCode, message: str | None, trailing: Any) -> HttpError:
    """The HTTP error for a gRPC status; `grpc-status-details-bin` in `trailing` gives the details."""
    number = int(code.value[0])
    text = message or code.name
    details: list[dict[str, Any]] = []
    for key, value in trailing or ():
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a malformed trailer: report the call without its details
            break
        if status.code == number:
            text = status.message or text
            details = [detail_json(any_) for any_ in status.details]
        break
    return HttpError(HTTP_STATUS.get(number, 500), code, text, details=details)


def detail_json(detail: Any) -> dict[str, Any]:
    """One `google.protobuf.Any` detail as JSON; an unknown type keeps its bytes (base64)."""
    try:
        found: dict[str, Any] = json_format.MessageToDict(detail)
        return found
    except (TypeError, KeyError, json_format.Error):
        return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}


# The rich detail types must be in the default pool for detail_json to name their fields.
_KNOWN_DETAILS = (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest)
