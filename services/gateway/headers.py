"""HTTP headers <-> gRPC metadata, and the deadline a client asks for.

To the upstream go `authorization`, `traceparent`, `tracestate`,
`x-request-id`, and every `Grpc-Metadata-<key>` as `<key>` (values of `-bin`
keys are base64), except `x-mesh-*`, which only the gateway sets: a request
that sends one is refused (400 naming the header). Back come the upstream's response headers as
`Grpc-Metadata-<key>` and its trailers as `Grpc-Trailer-<key>` (as
grpc-gateway does), minus gRPC's own.

The deadline is the `grpc-timeout` header (gRPC's form: `250m`, `5S`) or the
`timeout` query parameter (`250ms`, `1.5s`, `2m`, or gRPC's form), capped by
the configured maximum.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Any

FORWARDED = frozenset({b"authorization", b"traceparent", b"tracestate", b"x-request-id"})
PREFIX = b"grpc-metadata-"
#: Metadata a client may not set through Grpc-Metadata-* (gRPC's own and connection headers).
_RESERVED = frozenset({"content-type", "te", "host", "connection", "user-agent", "grpc-timeout"})
_HIDDEN_RESPONSE = ("grpc-", ":")
GATEWAY_ONLY = "x-mesh-"
"""Metadata saying who a call is for (services/runtime/principal.py): a client may not send it."""
_GRPC_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_HUMAN_TIMEOUT = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_HUMAN_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

Metadata = list[tuple[str, str | bytes]]


class HeaderError(ValueError):
    """A header or parameter the bridge cannot use; `field` names it."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def request_metadata(headers: Iterable[tuple[bytes, bytes]]) -> tuple[Metadata, str | None]:
    """The metadata to send upstream, and the raw `grpc-timeout` header if there was one."""
    metadata: Metadata = []
    timeout: str | None = None
    for name, value in headers:
        if name in FORWARDED:
            metadata.append((name.decode("latin-1"), value.decode("latin-1")))
        elif name.startswith(PREFIX):
            key = name[len(PREFIX) :].decode("latin-1")
            if not key or key in _RESERVED or key.startswith(_HIDDEN_RESPONSE):
                continue
            if key.startswith(GATEWAY_ONLY):
                raise HeaderError(name.decode("latin-1"), "x-mesh-* metadata is set by the gateway only")
            if key.endswith("-bin"):
                try:
                    metadata.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
                except (binascii.Error, ValueError):
                    raise HeaderError(name.decode("latin-1"), "a -bin value must be base64") from None
            else:
                metadata.append((key, value.decode("latin-1")))
        elif name == b"grpc-timeout":
            timeout = value.decode("latin-1")
    return metadata, timeout


def response_headers(initial: Any, trailing: Any) -> list[tuple[bytes, bytes]]:
    """Upstream metadata as `grpc-metadata-*` (headers) and `grpc-trailer-*` (trailers)."""
    out: list[tuple[bytes, bytes]] = []
    for prefix, metadata in ((b"grpc-metadata-", initial), (b"grpc-trailer-", trailing)):
        for key, value in metadata or ():
            if key.startswith(_HIDDEN_RESPONSE):
                continue
            raw = (
                base64.b64encode(value)
                if isinstance(value, bytes)
                else str(value).encode("latin-1", "replace")
            )
            out.append((prefix + key.encode("latin-1"), raw))
    return out


def parse_timeout(header: str | None, query: str | None, maximum: float) -> float | None:
    """Seconds until the deadline the client asked for (capped at `maximum`), or None."""
    seconds: float | None = None
    if header is not None:
        match = _GRPC_TIMEOUT.match(header.strip())
        if match is None:
            raise HeaderError("grpc-timeout", f"expected a gRPC timeout like '500m' or '5S', got {header!r}")
        seconds = int(match.group(1)) * _GRPC_UNITS[match.group(2)]
    if query is not None:
        text = query.strip()
        human = _HUMAN_TIMEOUT.match(text)
        grpc_form = _GRPC_TIMEOUT.match(text)
        if human is not None:
            seconds = float(human.group(1)) * _HUMAN_UNITS[human.group(2)]
        elif grpc_form is not None:
            seconds = int(grpc_form.group(1)) * _GRPC_UNITS[grpc_form.group(2)]
        else:
            raise HeaderError("timeout", f"expected a duration like '500ms', '1.5s' or '2m', got {query!r}")
    if seconds is None:
        return None
    if seconds <= 0:
        raise HeaderError("timeout" if query is not None else "grpc-timeout", "must be positive")
    return min(seconds, maximum)
