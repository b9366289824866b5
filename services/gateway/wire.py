"""gRPC over cleartext HTTP/2 from asyncio: the bridge's own client for `--upstream` servers.

Why not grpc.aio: in front of a server on the same core, the grpc.aio client
cost the bridge about as much CPU per request as everything else together
(C-core's call machinery, a completion-queue thread, and a wake-up of the
event loop per event). This client is one asyncio protocol per connection
that speaks just what unary and server-streaming calls need: a request is
one write (HEADERS + DATA, coalesced with others sent in the same loop
iteration), a response is parsed where it lands in `data_received`.

What it implements (RFC 9113 as a client, the gRPC HTTP/2 protocol):
- one connection per target, opened on first use; when it is lost, calls on
  it fail UNAVAILABLE and the next call reconnects (after a short backoff
  when connecting failed);
- SETTINGS (the server's frame size, window and stream limits; no push),
  PING answers, GOAWAY (streams past the last one the server took fail
  UNAVAILABLE and are retried; new calls go to a new connection),
  RST_STREAM (mapped to a status like grpc does), CONTINUATION, padding;
- flow control both ways: sends wait for window; receive windows are given
  back as messages are consumed, so a slow reader of a stream holds back
  only its own stream;
- HPACK with the dynamic table (`hpack.py`); metadata both ways (`-bin`
  values base64 on the wire), `grpc-timeout`, percent-decoded `grpc-message`;
- deadlines (the call fails DEADLINE_EXCEEDED and the stream is reset), and
  cancellation (RST_STREAM CANCEL) when the caller goes away;
- a maximum received message size (4 MiB, like grpc) and no compression.

TLS, load balancing and health-checked routing are not here: inside the mesh
the bridge uses the mesh client's grpc.aio channels, which have them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import grpc

from . import hpack

Metadata = tuple[tuple[str, str | bytes], ...]

MAX_MESSAGE = 4 * 1024 * 1024
"""Largest response message accepted (grpc's default)."""
_WINDOW = MAX_MESSAGE + 5
"""What each stream may receive before we give window back: one whole message."""
_CONNECTION_WINDOW = 64 * 1024 * 1024
_MAX_HEADER_BLOCK = 256 * 1024
"""Largest header block accepted across CONTINUATION frames (they have no flow control)."""
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = (
    0,
    1,
    3,
    4,
    6,
    7,
    8,
    9,
)
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_SETTINGS_HEADER_TABLE_SIZE, _SETTINGS_ENABLE_PUSH, _SETTINGS_MAX_CONCURRENT = 1, 2, 3
_SETTINGS_INITIAL_WINDOW, _SETTINGS_MAX_FRAME = 4, 5
_MAX_STREAM_ID = 2**31 - 1
_RST_TO_CODE = {
    0x7: grpc.StatusCode.UNAVAILABLE,  # REFUSED_STREAM: never processed, safe to retry
    0x8: grpc.StatusCode.CANCELLED,
    0xB: grpc.StatusCode.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
    0xC: grpc.StatusCode.PERMISSION_DENIED,  # INADEQUATE_SECURITY
}
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


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


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

    def on_headers(self, fields: _Fields, end_stream: bool) -> None:
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
        if self.unacked >= _WINDOW // 2 and not self.closed:
            self.connection.window_update(self.id, self.unacked)
            self.unacked = 0


class Connection(asyncio.Protocol):
    """One HTTP/2 connection to a target and the streams on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, authority: bytes, user_agent: bytes) -> None:
        self.loop = loop
        self.authority = authority
        self.user_agent = user_agent
        self.encoder = hpack.Encoder()
        self.heads: dict[bytes, tuple[int, bytes]] = {}
        """Path -> the fields every call of it starts with, encoded, and the table version they need."""
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.decoder = hpack.Decoder()
        self.blocks: dict[bytes, tuple[int, _Fields]] = {}
        """Header blocks seen (the server's are mostly the same few), decoded, by table version."""
        self.inbox = bytearray()
        self.outbox: list[bytes] = []
        self.flush_scheduled = False
        self.peer_initial_window = 65535
        self.peer_max_frame = 16384
        self.peer_max_streams = 2**31
        self.send_window = 65535
        self.window_waiters: list[asyncio.Future[None]] = []
        self.stream_waiters: deque[asyncio.Future[None]] = deque()
        self.received = 0
        self.continuation: tuple[int, int, bytearray] | None = None
        """A header block in progress: stream id, flags of its HEADERS frame, fragments."""
        self.open = True
        self.closing = False
        """No new streams: the server sent GOAWAY or the connection failed."""
        self.lost: asyncio.Future[None] = loop.create_future()
        self.paused = False
        self.resumed: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        writer: Any = transport  # uvloop's transports are not asyncio.Transport subclasses
        self.transport = writer
        settings = (
            _SETTINGS_ENABLE_PUSH.to_bytes(2, "big")
            + (0).to_bytes(4, "big")
            + _SETTINGS_INITIAL_WINDOW.to_bytes(2, "big")
            + _WINDOW.to_bytes(4, "big")
        )
        increment = (_CONNECTION_WINDOW - 65535).to_bytes(4, "big")
        writer.write(_PREFACE + _frame(_SETTINGS, 0, 0, settings) + _frame(_WINDOW_UPDATE, 0, 0, increment))

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.closing = True
        detail = f"connection to {self.authority.decode()} lost" + (f": {exc}" if exc else "")
        for stream in list(self.streams.values()):
            stream.finish(RpcError(grpc.StatusCode.UNAVAILABLE, detail, stream.initial or ()))
        self._release_waiters()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        self.resumed = None

    def data_received(self, data: bytes) -> None:
        inbox = self.inbox
        if inbox:
            inbox += data
            view = bytes(inbox)
        else:
            view = data
        position, end = 0, len(view)
        try:
            while end - position >= 9:
                length = int.from_bytes(view[position : position + 3], "big")
                if end - position < 9 + length:
                    break
                kind = view[position + 3]
                flags = view[position + 4]
                stream_id = int.from_bytes(view[position + 5 : position + 9], "big") & _MAX_STREAM_ID
                payload = view[position + 9 : position + 9 + length]
                position += 9 + length
                if length > 16384:
                    raise _ProtocolError(f"a frame of {length} bytes, over the 16384 we allow")
                self._frame(kind, flags, stream_id, payload)
        except (_ProtocolError, hpack.HpackError) as exc:
            self._fail(str(exc))
            return
        if position < end:
            self.inbox = bytearray(view[position:])
        elif inbox:
            self.inbox = bytearray()

    # -- frames in ----------------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuation is not None and kind != _CONTINUATION:
            raise _ProtocolError("a header block interrupted by another frame")
        if kind == _DATA:
            self._data(flags, stream_id, payload)
        elif kind == _HEADERS:
            if flags & _PADDED:
                payload = _unpad(payload)
            if flags & _PRIORITY:
                payload = payload[5:]
            if flags & _END_HEADERS:
                self._headers(stream_id, flags, payload)
            else:
                self.continuation = (stream_id, flags, bytearray(payload))
        elif kind == _CONTINUATION:
            if self.continuation is None or self.continuation[0] != stream_id:
                raise _ProtocolError("a CONTINUATION frame out of place")
            self.continuation[2].extend(payload)
            if len(self.continuation[2]) > _MAX_HEADER_BLOCK:
                raise _ProtocolError(f"a header block of more than {_MAX_HEADER_BLOCK} bytes")
            if flags & _END_HEADERS:
                stream_id, first_flags, block = self.continuation
                self.continuation = None
                self._headers(stream_id, first_flags, bytes(block))
        elif kind == _SETTINGS:
            if not flags & _ACK:
                self._settings(payload)
        elif kind == _WINDOW_UPDATE:
            self._window_update(stream_id, int.from_bytes(payload[:4], "big") & _MAX_STREAM_ID)
        elif kind == _PING:
            if not flags & _ACK:
                self._send(_frame(_PING, _ACK, 0, payload))
        elif kind == _RST_STREAM:
            stream = self.streams.get(stream_id)
            if stream is not None:
                error_code = int.from_bytes(payload[:4], "big")
                code = _RST_TO_CODE.get(error_code, grpc.StatusCode.INTERNAL)
                stream.finish(
                    RpcError(
                        code,
                        f"stream reset by the server (HTTP/2 error {error_code})",
                        stream.initial or (),
                        unprocessed=error_code == 0x7,
                    )
                )
        elif kind == _GOAWAY:
            self._goaway(int.from_bytes(payload[:4], "big") & _MAX_STREAM_ID, payload[8:])
        elif kind == 5:  # PUSH_PROMISE, which SETTINGS_ENABLE_PUSH = 0 forbids
            raise _ProtocolError("the server pushed a stream")

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        self.received += size
        if self.received >= _CONNECTION_WINDOW // 2:
            self._send(_frame(_WINDOW_UPDATE, 0, 0, self.received.to_bytes(4, "big")))
            self.received = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if flags & _PADDED:
            payload = _unpad(payload)
        stream.on_data(payload)
        # Unary replies are read whole as they come; a stream's messages are given back as read.
        stream.consumed(size if not stream.streaming else size - len(payload))
        if flags & _END_STREAM and not stream.closed:
            stream.finish(
                RpcError(
                    grpc.StatusCode.UNKNOWN,
                    "the server ended the stream without trailers",
                    stream.initial or (),
                )
            )

    def _headers(self, stream_id: int, flags: int, block: bytes) -> None:
        decoder = self.decoder
        cached = self.blocks.get(block)
        if cached is not None and cached[0] == decoder.version:
            fields = cached[1]
        else:
            version = decoder.version
            fields = _Fields(decoder.decode(block))  # always decoded: the table must follow every block
            if decoder.version == version:
                # Nothing was added to the table: the same bytes mean the same fields until it changes.
                if len(self.blocks) >= 64:
                    self.blocks.clear()
                self.blocks[block] = (version, fields)
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_headers(fields, bool(flags & _END_STREAM))

    def _settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - len(payload) % 6, 6):
            key = int.from_bytes(payload[offset : offset + 2], "big")
            value = int.from_bytes(payload[offset + 2 : offset + 6], "big")
            if key == _SETTINGS_INITIAL_WINDOW:
                if value > _MAX_STREAM_ID:
                    raise _ProtocolError("an initial window over 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                self._release_waiters()
            elif key == _SETTINGS_MAX_FRAME:
                self.peer_max_frame = max(16384, min(value, 2**24 - 1))
            elif key == _SETTINGS_MAX_CONCURRENT:
                self.peer_max_streams = value
                self._admit_waiting()
            elif key == _SETTINGS_HEADER_TABLE_SIZE and value < self.encoder.max_size:
                self.encoder.resize(value)
        self._send(_frame(_SETTINGS, _ACK, 0))

    def _window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            self.send_window += increment
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
        self._release_waiters()

    def _goaway(self, last_stream_id: int, debug: bytes) -> None:
        self.closing = True
        detail = "the server is going away" + (f" ({debug.decode('utf-8', 'replace')})" if debug else "")
        for stream_id, stream in list(self.streams.items()):
            if stream_id > last_stream_id:
                stream.finish(RpcError(grpc.StatusCode.UNAVAILABLE, detail, unprocessed=True))
        self._admit_waiting()
        self._close_when_idle()

    def _fail(self, reason: str) -> None:
        """A connection-level protocol error: tell the server, close, fail every call on it."""
        self._send(_frame(_GOAWAY, 0, 0, (0).to_bytes(4, "big") + (1).to_bytes(4, "big") + reason.encode()))
        self._flush()
        for stream in list(self.streams.values()):
            stream.finish(
                RpcError(grpc.StatusCode.INTERNAL, f"HTTP/2 protocol error: {reason}", stream.initial or ())
            )
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- frames out ---------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        """Queue bytes; everything queued in one loop iteration goes out in one write."""
        self.outbox.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.outbox and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.outbox))
        self.outbox.clear()

    def reset(self, stream_id: int) -> None:
        if self.open:
            self._send(_frame(_RST_STREAM, 0, stream_id, (0x8).to_bytes(4, "big")))

    def window_update(self, stream_id: int, increment: int) -> None:
        self._send(_frame(_WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big")))

    def forget(self, stream_id: int) -> None:
        if self.streams.pop(stream_id, None) is not None:
            self._admit_waiting()
            if self.closing:
                self._close_when_idle()

    def _close_when_idle(self) -> None:
        if not self.streams and self.transport is not None:
            self._flush()
            self.transport.close()

    def _release_waiters(self) -> None:
        waiters, self.window_waiters = self.window_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _admit_waiting(self) -> None:
        while self.stream_waiters and (len(self.streams) < self.peer_max_streams or self.closing):
            waiter = self.stream_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    @property
    def usable(self) -> bool:
        return self.open and not self.closing and self.next_id < _MAX_STREAM_ID

    async def start(
        self, path: bytes, metadata: list[bytes], body: bytes, deadline: float | None, streaming: bool
    ) -> Stream:
        """Open a stream and send the request (headers, one message, end of stream)."""
        while len(self.streams) >= self.peer_max_streams and self.usable:
            waiter = self.loop.create_future()
            self.stream_waiters.append(waiter)
            await _wait(waiter, deadline)
        if not self.usable:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "the connection is closing", unprocessed=True)
        stream_id = self.next_id
        self.next_id += 2
        stream = Stream(self, stream_id, deadline, streaming)
        self.streams[stream_id] = stream
        encoder = self.encoder
        prefix = encoder.prefix()
        cached = self.heads.get(path)
        if cached is not None and cached[0] == encoder.version:
            head = cached[1]
        else:
            before = encoder.version
            head = b"".join(
                (
                    hpack.indexed(3),  # :method POST
                    hpack.indexed(6),  # :scheme http
                    encoder.field(b":path", path),
                    encoder.field(b":authority", self.authority),
                    encoder.field(b"content-type", b"application/grpc"),
                    encoder.field(b"te", b"trailers"),
                    encoder.field(b"user-agent", self.user_agent),
                )
            )
            if encoder.version == before:
                # Every field was in the table: the same bytes do until an index moves.
                self.heads[path] = (before, head)
        block = [prefix, head] if prefix else [head]
        if deadline is not None:
            block.append(hpack.literal(b"grpc-timeout", grpc_timeout(deadline - self.loop.time())))
        block.extend(metadata)
        headers = self._header_frames(stream_id, b"".join(block))
        message = b"\x00" + len(body).to_bytes(4, "big") + body
        size = len(message)
        if size <= min(stream.send_window, self.send_window, self.peer_max_frame):
            stream.send_window -= size
            self.send_window -= size
            self._send(headers + _frame(_DATA, _END_STREAM, stream_id, message))
            return stream
        self._send(headers)
        try:
            await self._send_data(stream, message, deadline)
        except BaseException:
            if not stream.closed:
                stream.finish(RpcError(grpc.StatusCode.CANCELLED, "Cancelled while sending"))
                self.reset(stream_id)
            raise
        return stream

    def _header_frames(self, stream_id: int, block: bytes) -> bytes:
        """HEADERS, and CONTINUATION frames when the block is larger than a frame."""
        limit = self.peer_max_frame
        if len(block) <= limit:
            return _frame(_HEADERS, _END_HEADERS, stream_id, block)
        pieces = [block[i : i + limit] for i in range(0, len(block), limit)]
        frames = [_frame(_HEADERS, 0, stream_id, pieces[0])]
        frames += [_frame(_CONTINUATION, 0, stream_id, piece) for piece in pieces[1:-1]]
        frames.append(_frame(_CONTINUATION, _END_HEADERS, stream_id, pieces[-1]))
        return b"".join(frames)

    async def _send_data(self, stream: Stream, message: bytes, deadline: float | None) -> None:
        view = memoryview(message)
        while view:
            if stream.closed:
                return
            allowed = min(stream.send_window, self.send_window, self.peer_max_frame, len(view))
            if allowed <= 0:
                waiter = self.loop.create_future()
                self.window_waiters.append(waiter)
                await _wait(waiter, deadline)
                if not self.open:
                    raise RpcError(grpc.StatusCode.UNAVAILABLE, "connection lost while sending")
                continue
            chunk = bytes(view[:allowed])
            view = view[allowed:]
            stream.send_window -= allowed
            self.send_window -= allowed
            self._send(_frame(_DATA, 0 if view else _END_STREAM, stream.id, chunk))
            if self.paused:
                self.resumed = self.resumed or self.loop.create_future()
                await _wait(self.resumed, deadline)


class _ProtocolError(Exception):
    pass


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise _ProtocolError("a padded frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise _ProtocolError("padding longer than the frame")
    return payload[1 : len(payload) - pad]


class _Fields:
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


def _http_error(status: bytes) -> RpcError:
    number = int(status) if status.isdigit() else 0
    code = _HTTP_TO_CODE.get(number, grpc.StatusCode.UNKNOWN)
    return RpcError(code, f"the server answered HTTP {number or status!r}, not gRPC")


async def _wait(future: asyncio.Future[None], deadline: float | None) -> None:
    if deadline is None:
        await future
        return
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        await asyncio.wait_for(asyncio.shield(future), max(remaining, 0.0))
    except TimeoutError:
        raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None


# -- the channel: connections and calls -------------------------------------------------------------


class Channel:
    """Calls to one `host:port`, on one connection at a time."""

    def __init__(self, address: str, user_agent: str = "rideshare-gateway") -> None:
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        if not self.host or not 0 < self.port < 65536:
            raise ValueError(f"expected HOST:PORT, got {address!r}")
        self.authority = address.encode()
        self.user_agent = user_agent.encode()
        self.connection: Connection | None = None
        self.connecting: asyncio.Future[Connection] | None = None
        self.retry_at = 0.0
        self.backoff = 0.0
        self.last_error = ""
        self.closed = False

    async def _connection(self, deadline: float | None) -> Connection:
        connection = self.connection
        if connection is not None and connection.usable:
            return connection
        if self.closed:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "the channel is closed", unprocessed=True)
        if self.connecting is None:
            self.connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.wait_for(
                asyncio.shield(self.connecting),
                None if deadline is None else max(deadline - asyncio.get_running_loop().time(), 0.0),
            )
        except TimeoutError:
            raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded while connecting") from None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            now = time.monotonic()
            if now < self.retry_at:
                raise RpcError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"failed to connect to {self.authority.decode()}: {self.last_error}",
                    unprocessed=True,
                )
            try:
                _, protocol = await loop.create_connection(
                    lambda: Connection(loop, self.authority, self.user_agent), self.host, self.port
                )
            except OSError as exc:
                self.backoff = min(max(self.backoff * 2, 0.1), 2.0)
                self.retry_at = time.monotonic() + self.backoff
                self.last_error = exc.strerror or str(exc)
                raise RpcError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"failed to connect to {self.authority.decode()}: {self.last_error}",
                    unprocessed=True,
                ) from None
            self.backoff = 0.0
            self.connection = protocol
            return protocol
        finally:
            self.connecting = None

    async def unary(
        self, path: bytes, request: bytes, metadata: list[bytes], deadline: float | None
    ) -> tuple[bytes, Metadata, Metadata]:
        """One unary call: the response message and the initial and trailing metadata."""
        connection = await self._connection(deadline)
        stream = await connection.start(path, metadata, request, deadline, False)
        try:
            await stream.done
        except asyncio.CancelledError:
            if not stream.closed:
                stream.finish(RpcError(grpc.StatusCode.CANCELLED, "Cancelled"))
                connection.reset(stream.id)
            raise
        if stream.error is not None:
            raise stream.error
        messages = stream.messages
        if len(messages) != 1:
            raise RpcError(
                grpc.StatusCode.INTERNAL,
                f"a unary call answered with {len(messages)} messages",
                stream.initial or (),
                stream.trailing,
            )
        return messages[0], stream.initial or (), stream.trailing

    async def open_stream(
        self, path: bytes, request: bytes, metadata: list[bytes], deadline: float | None
    ) -> ServerStream:
        connection = await self._connection(deadline)
        stream = await connection.start(path, metadata, request, deadline, True)
        return ServerStream(stream)

    async def close(self) -> None:
        self.closed = True
        connection = self.connection
        if connection is not None and connection.transport is not None:
            connection.closing = True
            connection._flush()
            connection.transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(connection.lost), 1.0)


class ServerStream:
    """The reading side of a server-streaming call."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    async def initial_metadata(self) -> Metadata:
        """Once the server answered; RpcError if the call failed before it sent any message."""
        stream = self._stream
        while stream.initial is None and not stream.closed:
            await self._wait()
        if stream.error is not None and not stream.messages:
            raise stream.error
        return stream.initial or ()

    async def _wait(self) -> None:
        stream = self._stream
        stream.waiter = stream.connection.loop.create_future()
        try:
            await stream.waiter
        finally:
            stream.waiter = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[bytes]:
        stream = self._stream
        while True:
            if stream.messages:
                message = stream.messages.popleft()
                stream.consumed(len(message) + 5)
                yield message
                continue
            if stream.closed:
                if stream.error is not None:
                    raise stream.error
                return
            await self._wait()

    @property
    def trailing_metadata(self) -> Metadata:
        return self._stream.trailing

    def cancel(self) -> None:
        stream = self._stream
        if not stream.closed:
            stream.finish(RpcError(grpc.StatusCode.CANCELLED, "Cancelled", stream.initial or ()))
            stream.connection.reset(stream.id)


def encode_metadata(metadata: Any) -> list[bytes]:
    """Header fields for call metadata: `(key, str | bytes)` pairs, `-bin` values base64."""
    fields: list[bytes] = []
    for key, value in metadata:
        raw = (
            base64.b64encode(value).rstrip(b"=")
            if isinstance(value, bytes)
            else value.encode("latin-1", "replace")
        )
        fields.append(hpack.literal(key.encode("latin-1"), raw))
    return fields
