"""HTTP headers <-> gRPC metadata, and the deadline a client asks for.

To the upstream go `authorization`, `traceparent`, `tracestate`,
`x-request-id`, and every `Grpc-Metadata-<key>` as `<key>` (values of `-bin`
keys are base64), except `x-mesh-*`, which only the gateway sets: a request
that sends one is refused (400 naming the header). Back come the upstream's response headers as
`Grpc-Metadata-<key>` and its trailers as `Grpc-Trailer-<key>` (as
grpc-gateway does), minus gRPC's own.

Nothing reaches gRPC unchecked: a metadata key has gRPC's characters
(`0-9 a-z _ - .`), a value is printable ASCII (a `-bin` value base64), each
value is at most 4 KiB and all of them together at most 6 KiB (counted as
HTTP/2 does, name + value + 32 each), which keeps a call with the bridge's own
headers under grpc's 8 KiB metadata limit. Past any of these: 400 naming the
header, where grpc would fail the call (500) or answer RESOURCE_EXHAUSTED (429,
which tells a client to retry what never succeeds).

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

_KEY = re.compile(rb"[0-9a-z_.\-]+")
_ASCII = re.compile(rb"[\x20-\x7e]*")
_BASE64 = re.compile(rb"[A-Za-z0-9+/\-_]*=*")
MAX_VALUE_BYTES = 4096
"""Longest metadata value a client may send."""
MAX_METADATA_BYTES = 6144
"""All the metadata a client sends, each entry counted as HTTP/2 does: name + value + 32."""

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
    size = 0
    for name, value in headers:
        if name in FORWARDED:
            _check_text(name, value)
            key = name.decode()
            metadata.append((key, value.decode()))
        elif name.startswith(PREFIX):
            raw_key = name[len(PREFIX) :]
            if not raw_key:
                continue
            if _KEY.fullmatch(raw_key) is None:
                raise HeaderError(
                    name.decode("latin-1"), "a metadata key may only hold 0-9, a-z, '_', '-' and '.'"
                )
            key = raw_key.decode()
            if key in _RESERVED or key.startswith(_HIDDEN_RESPONSE):
                continue
            if key.startswith(GATEWAY_ONLY):
                raise HeaderError(name.decode("latin-1"), "x-mesh-* metadata is set by the gateway only")
            if key.endswith("-bin"):
                metadata.append((key, _binary(name, value)))
            else:
                _check_text(name, value)
                metadata.append((key, value.decode()))
        elif name == b"grpc-timeout":
            timeout = value.decode("latin-1")
            continue
        else:
            continue
        size += len(key) + len(value) + 32
    if size > MAX_METADATA_BYTES:
        raise HeaderError(
            "headers",
            f"the headers sent on as gRPC metadata come to {size} bytes, more than {MAX_METADATA_BYTES} "
            "(each counted as name + value + 32)",
        )
    return metadata, timeout


def _check_text(name: bytes, value: bytes) -> None:
    """A value gRPC accepts, or the HeaderError naming the header."""
    field = name.decode("latin-1")
    if len(value) > MAX_VALUE_BYTES:
        raise HeaderError(field, f"is {len(value)} bytes long, more than {MAX_VALUE_BYTES}")
    if _ASCII.fullmatch(value) is None:
        raise HeaderError(field, "must be printable ASCII (gRPC metadata); send binary as -bin, in base64")


def _binary(name: bytes, value: bytes) -> bytes:
    """A `-bin` header's bytes: its value is base64, standard or URL-safe, padding optional."""
    field = name.decode("latin-1")
    if len(value) > MAX_VALUE_BYTES:
        raise HeaderError(field, f"is {len(value)} bytes long, more than {MAX_VALUE_BYTES}")
    if _BASE64.fullmatch(value) is not None:
        unpadded = value.rstrip(b"=")
        try:
            return base64.b64decode(unpadded + b"=" * (-len(unpadded) % 4), altchars=b"-_")
        except (binascii.Error, ValueError):
            pass
    raise HeaderError(field, "a -bin value must be base64")


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
