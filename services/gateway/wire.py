"""gRPC over HTTP/2 (cleartext, or TLS with ALPN h2) from asyncio: the bridge's client for `--upstream`s.

Why not grpc.aio: in front of a server on the same core, the grpc.aio client
was about half of the bridge's CPU per request (C-core's call machinery, a
completion-queue thread, a wake-up of the event loop per event); this client
cut the bridge's CPU per request by a quarter (docs/benchmarks.md, section 2).
It is one asyncio protocol per connection that speaks just what gRPC calls
need: a unary request is one write (HEADERS + DATA), a stream of requests is
HEADERS, a DATA frame per message and an empty END_STREAM; a response is
parsed where it lands in `data_received`, and the header blocks a server
repeats are decoded once.

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

TLS is the caller's `ssl.SSLContext` (upstream_tls.py; ALPN h2 required).
Load balancing and health-checked routing are not here: inside the mesh the
bridge uses the mesh client's grpc.aio channels, which have them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from . import hpack
from .h2connection import Connection
from .h2stream import MAX_MESSAGE, Metadata, RpcError, Stream, grpc_timeout
from .upstream_tls import UpstreamTls

__all__ = [
    "MAX_MESSAGE",
    "Channel",
    "Metadata",
    "RpcError",
    "StreamingCall",
    "encode_metadata",
    "grpc_timeout",
]

TRANSPARENT_RETRIES = 3
"""How many times in a row a unary call the server refused unseen is sent again."""
HANDSHAKE_TIMEOUT = 10.0
"""How long a new connection may take to send its SETTINGS before it counts as failed."""


class Channel:
    """Calls to one `host:port`, on one connection at a time."""

    def __init__(
        self, address: str, user_agent: str = "rideshare-gateway", tls: UpstreamTls | None = None
    ) -> None:
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        if not self.host or not 0 < self.port < 65536:
            raise ValueError(f"expected HOST:PORT, got {address!r}")
        self.ssl = tls.context() if tls is not None else None
        self.server_name = (tls.server_name or self.host) if tls is not None else None
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
                    lambda: Connection(loop, self.authority, self.user_agent, https=self.ssl is not None),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.server_name,
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
            if self.ssl is not None and _alpn(protocol) != "h2":
                if protocol.transport is not None:
                    protocol.transport.close()
                self.last_error = "the server did not agree to HTTP/2 (ALPN h2) over TLS"
                raise RpcError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"failed to connect to {self.authority.decode()}: {self.last_error}",
                    unprocessed=True,
                )
            # Streams wait for the server's SETTINGS: until then its stream limit is unknown, and
            # a burst of calls past it would be refused (RST_STREAM REFUSED_STREAM).
            await asyncio.wait(
                (protocol.settled, protocol.lost),
                timeout=HANDSHAKE_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not protocol.settled.done():
                if protocol.transport is not None:
                    protocol.transport.close()
                self.backoff = min(max(self.backoff * 2, 0.1), 2.0)
                self.retry_at = time.monotonic() + self.backoff
                self.last_error = "no HTTP/2 SETTINGS from the server (is it a gRPC server?)"
                raise RpcError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"failed to connect to {self.authority.decode()}: {self.last_error}",
                    unprocessed=True,
                )
            self.backoff = 0.0
            self.connection = protocol
            return protocol
        finally:
            self.connecting = None

    async def unary(
        self, path: bytes, request: bytes, metadata: list[bytes], deadline: float | None
    ) -> tuple[bytes, Metadata, Metadata]:
        """One unary call: the response message and the initial and trailing metadata.

        A call the server refused unseen (RST_STREAM REFUSED_STREAM, or past its GOAWAY) is
        sent again at once, up to `TRANSPARENT_RETRIES` times, as grpc's transparent retry
        does: a server counts a finished stream against its limit a moment after it sent the
        end of it, so a client that keeps to the limit can still be refused in a burst.
        """
        refusals = 0
        while True:
            connection = await self._connection(deadline)
            stream = await connection.start(path, metadata, request, deadline, False)
            try:
                await stream.done
            except asyncio.CancelledError:
                if not stream.closed:
                    stream.finish(RpcError(grpc.StatusCode.CANCELLED, "Cancelled"))
                    connection.reset(stream.id)
                raise
            error = stream.error
            if error is None:
                break
            if not error.unprocessed or refusals == TRANSPARENT_RETRIES:
                raise error
            refusals += 1
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
        self,
        path: bytes,
        request: bytes | None,
        metadata: list[bytes],
        deadline: float | None,
        server_streaming: bool = True,
    ) -> StreamingCall:
        """A call whose answer is read as it comes; with `request` None the caller sends the
        requests (`StreamingCall.send`, then `.end_requests`): client- and bidi-streaming."""
        connection = await self._connection(deadline)
        stream = await connection.start(path, metadata, request, deadline, server_streaming)
        return StreamingCall(stream, deadline)

    async def close(self) -> None:
        self.closed = True
        connection = self.connection
        if connection is not None and connection.transport is not None:
            connection.closing = True
            connection.transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(connection.lost), 1.0)


def _alpn(connection: Connection) -> str | None:
    transport = connection.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return ssl_object.selected_alpn_protocol() if ssl_object is not None else None


class StreamingCall:
    """A call read message by message (server streaming), and written so (client streaming)."""

    def __init__(self, stream: Stream, deadline: float | None) -> None:
        self._stream = stream
        self._deadline = deadline

    async def send(self, message: bytes) -> bool:
        """Send one more request; False once the call is over (the server has answered)."""
        stream = self._stream
        await stream.connection.send_message(stream, message, self._deadline)
        return not stream.closed

    def end_requests(self) -> None:
        """No more requests: the server sees the end of the request stream."""
        self._stream.connection.end_requests(self._stream)

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
