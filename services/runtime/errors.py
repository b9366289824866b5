"""Errors: what a handler raises, and how it reaches the client.

Every RPC error travels as a `google.rpc.Status` in `grpc-status-details-bin`
with an `ErrorInfo{reason, domain}` (and `BadRequest` for bad input), so
clients, grpcurl and the REST bridge all see the same thing.

    MeshError               an error meant for the caller: code + reason + message
    ├── InvalidArgument     INVALID_ARGUMENT, with BadRequest.field_violations
    ├── NotFound            NOT_FOUND
    ├── AlreadyExists       ALREADY_EXISTS
    ├── FailedPrecondition  FAILED_PRECONDITION: the resource is in the wrong state
    ├── Aborted             ABORTED: a concurrency conflict; retry the whole operation
    ├── PermissionDenied    PERMISSION_DENIED
    ├── Unauthenticated     UNAUTHENTICATED
    ├── ResourceExhausted   RESOURCE_EXHAUSTED
    ├── Unavailable         UNAVAILABLE: a dependency is down; safe to retry
    └── Internal            INTERNAL: a bug; the message carries a correlation id
    ConfigError             a bad mesh.toml or environment override (never sent over RPC)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

MAX_MESSAGE_BYTES = 1024
"""An error's message is cut to this many bytes (UTF-8), an ellipsis last."""
MAX_ECHO_BYTES = 256
"""Each ErrorInfo metadata value and field violation description is cut to this many bytes."""
MAX_STATUS_BYTES = 3072
"""The serialized `google.rpc.Status` at most: past it, the last field violations are left out."""
# Why: an error travels in the trailers, the message twice (`grpc-message`, percent-encoded, and
# inside `grpc-status-details-bin`, base64), and a client refuses trailers past 8 KiB (grpc's
# default) with RESOURCE_EXHAUSTED, the 429 "retry later" at the gateway. Errors quote the
# caller's input (a resource name, a value), so a 4 KB name in a JSON body answered 429 instead
# of 404. Worst case now: 3 KiB of message percent-encoded + 4 KiB of base64 < 8 KiB.


def clip(text: str, limit: int = MAX_ECHO_BYTES) -> str:
    """`text` if it fits in `limit` UTF-8 bytes; else its start (whole characters) and an ellipsis."""
    if len(text) * 4 <= limit:  # no character is more than 4 bytes: the usual case, without encoding
        return text
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - len(_ELLIPSIS)].decode("utf-8", "ignore") + "\u2026"


_ELLIPSIS = "\u2026".encode()


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (`passenger.email`) and why."""

    field: str
    description: str
    reason: str = ""


class MeshError(Exception):
    """An error meant for the caller; the runtime turns it into a rich status."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason: str = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        message = clip(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = {key: clip(value) for key, value in (metadata or {}).items()}

    def extra_details(self, room: int) -> Iterable[any_pb2.Any]:
        """Details beyond ErrorInfo, in about `room` bytes; subclasses add theirs."""
        return ()

    def to_status(self, domain: str) -> status_pb2.Status:
        """The `google.rpc.Status` this error travels as."""
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=domain, metadata=self.metadata))
        room = MAX_STATUS_BYTES - info.ByteSize() - len(self.message.encode()) - 64  # 64: tags, type URL
        return status_pb2.Status(
            code=self.code.value[0],
            message=self.message,
            details=[info, *self.extra_details(room)],
        )

    def to_grpc_status(self, domain: str) -> grpc.Status:
        """The status in the form grpcio aborts with (trailers included)."""
        status: grpc.Status = rpc_status.to_status(self.to_status(domain))
        return status


class InvalidArgument(MeshError):
    """The request is malformed; `violations` name every bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Iterable[FieldViolation] | FieldViolation,
        *,
        message: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(violations, FieldViolation):
            violations = [violations]
        self.violations = list(violations)
        if not self.violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        message = message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message, reason=reason, metadata=metadata)

    @classmethod
    def field(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        """Shorthand for the common case of one bad field."""
        return cls([FieldViolation(field, description)], reason=reason)

    def extra_details(self, room: int) -> Iterable[any_pb2.Any]:
        """The BadRequest: every violation that fits in `room` bytes, and always the first."""
        bad_request = error_details_pb2.BadRequest()
        for v in self.violations:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=clip(v.field), description=clip(v.description), reason=v.reason
            )
            room -= violation.ByteSize() + 3  # its tag and length
            if room < 0 and bad_request.field_violations:
                break
            bad_request.field_violations.append(violation)
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        return (detail,)


class NotFound(MeshError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(MeshError):
    """A resource with that identity already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(MeshError):
    """The resource is not in a state that allows the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(MeshError):
    """A concurrent change won; the caller may retry the whole operation."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class PermissionDenied(MeshError):
    """The caller is known but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(MeshError):
    """The caller could not be identified."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class ResourceExhausted(MeshError):
    """A quota or rate limit was hit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(MeshError):
    """A dependency is down; the same call may succeed later."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class Internal(MeshError):
    """A bug on our side; details stay in the log under the correlation id."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


class ConfigError(Exception):
    """mesh.toml or an environment override is wrong; the message names file, key and problem."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


def status_code_name(code: int) -> str:
    """`5` -> `NOT_FOUND`, for logs and JSON bodies."""
    return str(code_pb2.Code.Name(code)) if code in code_pb2.Code.values() else str(code)
