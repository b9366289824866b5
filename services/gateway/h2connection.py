"""HTTP/2 as a client, for the bridge's gRPC client: one connection and the streams on it.

It reads frames where they land (`data_received`), keeps HPACK in step
(decoding every header block in order; a block the server repeats is decoded
once per table state), answers SETTINGS and PING, applies GOAWAY, RST_STREAM,
CONTINUATION and padding, and does flow control both ways: sends wait for the
server's windows, and windows are given back as data is read (`h2stream.py`
decides when). Starting a call writes its HEADERS (with the repeated fields
from HPACK's dynamic table) and its one DATA frame in one write.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import grpc

from . import hpack
from .h2stream import WINDOW, Fields, RpcError, Stream, grpc_timeout

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


def _grpc_message(body: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte length, the bytes."""
    return b"\x00" + len(body).to_bytes(4, "big") + body


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


class Connection(asyncio.Protocol):
    """One HTTP/2 connection to a target and the streams on it."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, authority: bytes, user_agent: bytes, *, https: bool = False
    ) -> None:
        self.loop = loop
        self.scheme = hpack.indexed(7 if https else 6)
        """`:scheme https` or `:scheme http`, from HPACK's static table."""
        self.authority = authority
        self.user_agent = user_agent
        self.encoder = hpack.Encoder()
        self.heads: dict[bytes, tuple[int, bytes]] = {}
        """Path -> the fields every call of it starts with, encoded, and the table version they need."""
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.decoder = hpack.Decoder()
        self.blocks: dict[bytes, tuple[int, Fields]] = {}
        """Header blocks seen (the server's are mostly the same few), decoded, by table version."""
        self.inbox = bytearray()
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
        self.settled: asyncio.Future[None] = loop.create_future()
        """The server's first SETTINGS arrived: its stream limit and windows are known."""
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
            + WINDOW.to_bytes(4, "big")
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
            fields = Fields(decoder.decode(block))  # always decoded: the table must follow every block
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
        if not self.settled.done():
            self.settled.set_result(None)

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
        for stream in list(self.streams.values()):
            stream.finish(
                RpcError(grpc.StatusCode.INTERNAL, f"HTTP/2 protocol error: {reason}", stream.initial or ())
            )
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- frames out ---------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        """Write at once: deferring to the end of the loop iteration to join writes measured no faster."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

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
        self, path: bytes, metadata: list[bytes], body: bytes | None, deadline: float | None, streaming: bool
    ) -> Stream:
        """Open a stream and send the request: headers, one message, end of stream.

        With `body` None only the headers go: the caller sends a stream of requests with
        `send_message` and ends it with `end_requests` (client- and bidi-streaming calls).
        """
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
                    self.scheme,
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
        if body is None:
            self._send(headers)
            return stream
        message = _grpc_message(body)
        if self._debit(stream, len(message)):
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

    async def send_message(self, stream: Stream, body: bytes, deadline: float | None) -> None:
        """One more request message on a stream opened without a body (waits for window)."""
        if stream.closed:
            return
        message = _grpc_message(body)
        if not self.paused and self._debit(stream, len(message)):
            self._send(_frame(_DATA, 0, stream.id, message))
            return
        await self._send_data(stream, message, deadline, end=False)

    def _debit(self, stream: Stream, size: int) -> bool:
        """Take `size` bytes of the stream's and the connection's send windows if a whole
        message fits in them and in one frame now (the one-write path); else take nothing."""
        if size > min(stream.send_window, self.send_window, self.peer_max_frame):
            return False
        stream.send_window -= size
        self.send_window -= size
        return True

    def end_requests(self, stream: Stream) -> None:
        """The client is done sending on a stream opened without a body (half-close)."""
        if not stream.closed:
            self._send(_frame(_DATA, _END_STREAM, stream.id))

    async def _send_data(
        self, stream: Stream, message: bytes, deadline: float | None, end: bool = True
    ) -> None:
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
            self._send(_frame(_DATA, _END_STREAM if end and not view else 0, stream.id, chunk))
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


async def _wait(future: asyncio.Future[None], deadline: float | None) -> None:
    if deadline is None:
        await future
        return
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        await asyncio.wait_for(asyncio.shield(future), max(remaining, 0.0))
    except TimeoutError:
        raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
