"""One gRPC call on one HTTP/2 stream: what the server sent, turned into messages and a status.

`h2connection.Connection` feeds a `Stream` the header blocks (decoded once,
as `Fields`) and DATA of its stream; the stream cuts the DATA into gRPC
messages (refusing compressed ones and ones over `MAX_MESSAGE`), reads the
status from the trailers (`grpc-status`, percent-decoded `grpc-message`, or
the HTTP status when the server did not answer gRPC), keeps the metadata, and
wakes whoever waits: the unary call (`done`) or a stream's reader (`waiter`).
Failures are `RpcError`, whichever side ended the call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import unquote

import grpc

if TYPE_CHECKING:
    from .h2connection import Connection

Metadata = tuple[tuple[str, str | bytes], ...]

MAX_MESSAGE = 4 * 1024 * 1024
"""Largest response message accepted (grpc's default)."""
WINDOW = MAX_MESSAGE + 5
"""What each stream may receive before we give window back: one whole message."""
_HTTP_TO_CODE = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}
#: Response headers that are the protocol's, not the application's metadata.
_PROTOCOL_HEADERS = frozenset(
    {"content-type", "grpc-status", "grpc-message", "grpc-encoding", "grpc-accept-encoding"}
)


class RpcError(Exception):
    """A call that did not end OK, as the server (or the connection) ended it."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        initial_metadata: Metadata = (),
        trailing_metadata: Metadata = (),
        *,
        unprocessed: bool = False,
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.initial_metadata = initial_metadata
        self.trailing_metadata = trailing_metadata
        self.unprocessed = unprocessed
        """The server never started on it (refused, or past a GOAWAY): safe to send again."""


def grpc_timeout(seconds: float) -> bytes:
    """The `grpc-timeout` header value: at most 8 digits, in the finest unit that fits."""
    if 0 < seconds < 99.9:
        return b"%du" % math.ceil(seconds * 1e6)
    for unit, scale in ((b"u", 1e6), (b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60), (b"H", 1 / 3600)):
        value = math.ceil(max(seconds, 0.0) * scale)
        if value < 100_000_000:
            return str(max(value, 1)).encode() + unit
    return b"99999999H"


def _metadata(headers: list[tuple[bytes, bytes]]) -> Metadata:
    out: list[tuple[str, str | bytes]] = []
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")
        if name.startswith(":") or name in _PROTOCOL_HEADERS:
            continue
        if name.endswith("-bin"):
            try:
                out.append((name, base64.b64decode(raw_value + b"=" * (-len(raw_value) % 4))))
            except (binascii.Error, ValueError):
                continue
        else:
            out.append((name, raw_value.decode("latin-1")))
    return tuple(out)


class Fields:
    """A decoded header block, as a call reads it."""

    __slots__ = ("code", "content_type", "message", "metadata", "status")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = b""
        self.content_type = b""
        self.code: grpc.StatusCode | None = None
        self.message = ""
        for key, value in headers:
            if key == b":status":
                self.status = value
            elif key == b"content-type":
                self.content_type = value
            elif key == b"grpc-status":
                self.code = _CODES.get(int(value) if value.isdigit() else -1, grpc.StatusCode.UNKNOWN)
            elif key == b"grpc-message":
                self.message = unquote(value.decode("latin-1"), errors="replace")
        self.metadata = _metadata(headers)


class Stream:
    """One call on a connection: what it has received, and who waits for it."""

    __slots__ = (
        "buffer",
        "closed",
        "connection",
        "done",
        "error",
        "id",
        "initial",
        "messages",
        "send_window",
        "streaming",
        "timer",
        "trailing",
        "unacked",
        "waiter",
    )

    def __init__(
        self, connection: Connection, stream_id: int, deadline: float | None, streaming: bool
    ) -> None:
        self.connection = connection
        self.id = stream_id
        self.streaming = streaming
        self.send_window = connection.peer_initial_window
        self.buffer = bytearray()
        self.messages: deque[bytes] = deque()
        self.unacked = 0
        """Bytes received and consumed, not yet given back as window."""
        self.initial: Metadata | None = None
        self.trailing: Metadata = ()
        self.error: RpcError | None = None
        self.closed = False
        """The server ended the stream (trailers, reset, or the connection went)."""
        loop = connection.loop
        self.done: asyncio.Future[None] = loop.create_future()
        self.waiter: asyncio.Future[None] | None = None
        """A streaming reader waiting for headers or the next message."""
        self.timer: asyncio.TimerHandle | None = None
        if deadline is not None:
            self.timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        if not self.closed:
            self.finish(RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", self.initial or ()))
            self.connection.reset(self.id)

    def finish(self, error: RpcError | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.error = error
        if self.timer is not None:
            self.timer.cancel()
        self.connection.forget(self.id)
        if not self.done.done():
            self.done.set_result(None)
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_headers(self, fields: Fields, end_stream: bool) -> None:
        if self.initial is None and not end_stream:
            if fields.status != b"200":
                self.finish(_http_error(fields.status))
                self.connection.reset(self.id)
                return
            if not fields.content_type.startswith(b"application/grpc"):
                unexpected = f"unexpected content-type {fields.content_type!r}"
                self.finish(RpcError(grpc.StatusCode.UNKNOWN, unexpected))
                self.connection.reset(self.id)
                return
            self.initial = fields.metadata
            self._wake()
            return
        if not end_stream:
            self.finish(RpcError(grpc.StatusCode.INTERNAL, "trailers without END_STREAM", self.initial or ()))
            self.connection.reset(self.id)
            return
        if self.initial is None:  # trailers only
            if fields.status != b"200" and fields.code is None:
                self.finish(_http_error(fields.status))
                return
            self.initial = ()
        self.trailing = fields.metadata
        code = fields.code
        if code is None:
            code, message = grpc.StatusCode.UNKNOWN, "the server sent no grpc-status"
        else:
            message = fields.message
        if code is grpc.StatusCode.OK and self.buffer:
            code, message = grpc.StatusCode.INTERNAL, "the stream ended inside a message"
        if code is grpc.StatusCode.OK:
            self.finish(None)
        else:
            self.finish(RpcError(code, message or code.name, self.initial, self.trailing))

    def on_data(self, data: bytes) -> None:
        if self.initial is None:
            self.finish(RpcError(grpc.StatusCode.INTERNAL, "DATA before the response headers"))
            self.connection.reset(self.id)
            return
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 5:
            length = int.from_bytes(buffer[1:5], "big")
            if length > MAX_MESSAGE:
                self.finish(
                    RpcError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"received message larger than max ({length} vs. {MAX_MESSAGE})",
                        self.initial,
                    )
                )
                self.connection.reset(self.id)
                return
            if len(buffer) < 5 + length:
                break
            if buffer[0]:
                self.finish(RpcError(grpc.StatusCode.INTERNAL, "a compressed message, never asked for"))
                self.connection.reset(self.id)
                return
            self.messages.append(bytes(buffer[5 : 5 + length]))
            del buffer[: 5 + length]
            if not self.streaming and len(self.messages) > 1:
                self.finish(RpcError(grpc.StatusCode.INTERNAL, "a unary call answered with several messages"))
                self.connection.reset(self.id)
                return
        if self.messages:
            self._wake()

    def consumed(self, size: int) -> None:
        """A reader took `size` bytes: give the window back once enough has been read."""
        self.unacked += size
        if self.unacked >= WINDOW // 2 and not self.closed:
            self.connection.window_update(self.id, self.unacked)
            self.unacked = 0


def _http_error(status: bytes) -> RpcError:
    number = int(status) if status.isdigit() else 0
    code = _HTTP_TO_CODE.get(number, grpc.StatusCode.UNKNOWN)
    return RpcError(code, f"the server answered HTTP {number or status!r}, not gRPC")
