"""The HTTP server's own limits: what one client may cost the gateway before the app sees a request.

uvicorn with httptools is the fastest HTTP/1.1 server here (docs/benchmarks.md),
but it enforces none of these, and answers its own errors in plain text.
`EdgeProtocol` is its protocol with the limits in front of the parser:

- **head bytes** (`max_header_bytes`, request line + headers, 64 KiB): bytes
  are counted before httptools sees them, and past the limit the connection
  gets 431 and is closed, so the parser (whose header values grow by
  concatenation: quadratic in their size) never holds more than the limit;
- **request target** (`max_url_bytes`): 414;
- **Host**: HTTP/1.1 needs exactly one (RFC 9112 section 3.2), any version at most one: 400;
- **header timeout**: a connection that has not sent a whole head within
  `header_timeout` of connecting (or of its first byte, after a keep-alive
  response) gets 408 and is closed (silently if it sent nothing at all);
- **body timeout**: no body byte for `body_timeout` while the body is incomplete:
  408 (or a close once the response has started). A body the app is not reading
  yet (uvicorn stopped reading: flow control) is not the client's fault and is not timed;
- **open connections** (`max_connections`): one more gets 503 with `Retry-After` and is closed;
- **keep-alive idle** (`idle_timeout`) is uvicorn's own `timeout_keep_alive`;
- **protocol errors** (httptools' 400s: a bad request line, chunk, Content-Length...)
  use the JSON error shape of errors.py, like every answer of the bridge.

The timeouts are checked by `Edge.sweep`, which the server calls on its tick
(every 0.1 s): a request pays two clock reads, never a timer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import grpc
import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from services.runtime.config import GatewayConfig

from .errors import HttpError
from .limits import Refusals

_HEAD, _BODY, _DONE = 0, 1, 2
"""Where a connection is: reading a head, reading a body, or the request is read (answering, or idle)."""


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the refusal is on the protocol."""


class Edge:
    """The limits of one server, and the connections they watch."""

    def __init__(self, settings: GatewayConfig) -> None:
        self.max_header_bytes = settings.max_header_bytes
        self.max_url_bytes = settings.max_url_bytes
        self.header_timeout = settings.header_timeout
        self.body_timeout = settings.body_timeout
        self.max_connections = settings.max_connections
        self.connections: set[EdgeProtocol] = set()
        self.refusals = Refusals("the gateway's HTTP limits")

    def sweep(self, now: float | None = None) -> None:
        """Close the connections past a timeout."""
        now = time.monotonic() if now is None else now
        for connection in list(self.connections):
            connection.check(now)


def protocol(edge: Edge) -> type[EdgeProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, one instance per connection, bound to `edge`."""
    return type("BoundEdgeProtocol", (EdgeProtocol,), {"edge": edge})


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `Edge` in front of its parser."""

    edge: ClassVar[Edge]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _HEAD
        self._since = 0.0
        """When the head began (connection or first byte), or when the last body byte came."""
        self._head_bytes = 0
        self._refusal: HttpError | None = None
        self._turned_away = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        edge = self.edge
        if len(edge.connections) >= edge.max_connections:
            self._turned_away = True
            error = _error(
                503,
                grpc.StatusCode.UNAVAILABLE,
                f"the gateway has {edge.max_connections} open connections, its limit; retry shortly",
                "TOO_MANY_CONNECTIONS",
                retry_after=1,
            )
            edge.refusals.count(error)
            transport.write(_render(error, []))
            transport.close()
            return
        super().connection_made(transport)
        edge.connections.add(self)
        self._since = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._turned_away:  # never made: uvicorn's state was not set up
            return
        self.edge.connections.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head counted before the parser sees it and every error as JSON."""
        self._unset_keepalive_if_required()
        if self._phase == _BODY:
            self._since = time.monotonic()
        else:
            room = self.edge.max_header_bytes - self._head_bytes
            if len(data) > room:
                # Feed what fits: if the head ends in it, the rest is body or the next request.
                self._head_bytes += room
                if room:
                    self._feed(data[:room])
                if self.transport.is_closing():
                    return
                if self._phase != _BODY and self._head_bytes >= self.edge.max_header_bytes:
                    self._refuse(
                        _error(
                            431,
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request line and headers exceed {self.edge.max_header_bytes} bytes",
                            "HEADERS_TOO_LARGE",
                        )
                    )
                    return
                self.data_received(data[room:])
                return
            self._head_bytes += len(data)
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no upgrade is served (uvicorn runs with ws="none"); the request is answered as HTTP
        except httptools.HttpParserError as exc:
            refusal = self._refusal
            if refusal is None:
                refusal = _error(
                    400, grpc.StatusCode.INVALID_ARGUMENT, f"malformed HTTP request: {exc}", "MALFORMED_HTTP"
                )
            self._refuse(refusal)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEAD
        self._since = time.monotonic()

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._since = time.monotonic()
        self._head_bytes = 0
        hosts = 0
        for name, _ in self.headers:
            if name == b"host":
                hosts += 1
        if hosts != 1 and (hosts or self.parser.get_http_version() == "1.1"):
            self._refusal = _error(
                400,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a request needs exactly one Host header; it has {hosts}",
                "INVALID_HOST",
            )
            raise _Refused
        if len(self.url) > self.edge.max_url_bytes:
            self._refusal = _error(
                414,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request target (path and query) is longer than {self.edge.max_url_bytes} bytes",
                "URL_TOO_LONG",
            )
            raise _Refused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = _DONE
        super().on_message_complete()

    def check(self, now: float) -> None:
        """Close this connection if it is past the header or body timeout (`Edge.sweep`)."""
        phase = self._phase
        if phase == _HEAD:
            if now - self._since <= self.edge.header_timeout or self._answering():
                return
            if not self._head_bytes:  # it never said anything: close it like an idle keep-alive
                self._refuse(None)
                return
            self._refuse(
                _error(
                    408,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the request headers did not arrive within {self.edge.header_timeout:g} s",
                    "REQUEST_TIMEOUT",
                )
            )
        elif phase == _BODY:
            if (
                self.flow.read_paused
            ):  # uvicorn is not reading (the app has not asked): not the client's doing
                self._since = now
            elif now - self._since > self.edge.body_timeout:
                error = _error(
                    408,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no part of the request body arrived for {self.edge.body_timeout:g} s",
                    "REQUEST_TIMEOUT",
                )
                cycle = self.cycle  # this request's: once it is answered, the connection can only be closed
                self._refuse(error, answer=cycle is None or not cycle.response_started)

    def _answering(self) -> bool:
        cycle = self.cycle
        return cycle is not None and cycle.response_started and not cycle.response_complete

    def _refuse(self, error: HttpError | None, answer: bool = True) -> None:
        """Answer `error` unless a response is under way (then it is cut short), and close."""
        self._phase = _DONE
        if self.transport.is_closing():
            return
        if error is not None:
            self.edge.refusals.count(error)
            if answer and not self._answering():
                self.transport.write(_render(error, self.server_state.default_headers))
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's next receive() says so, and its sends are dropped
            cycle.message_event.set()
        self.transport.close()


def _error(status: int, code: grpc.StatusCode, message: str, reason: str, retry_after: int = 0) -> HttpError:
    return HttpError(status, code, message, reason=reason, retry_after=retry_after)


def _render(error: HttpError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole HTTP response of an error, closing the connection."""
    body = error.encode()
    lines = [STATUS_LINE[error.status]]
    for name, value in [*default_headers, *error.headers]:
        lines += [name, b": ", value, b"\r\n"]
    lines += [
        b"content-type: application/json\r\ncontent-length: ",
        str(len(body)).encode(),
        b"\r\nconnection: close\r\n\r\n",
        body,
    ]
    return b"".join(lines)
