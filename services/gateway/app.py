"""The bridge as an ASGI application: HTTP/JSON in, gRPC out, JSON back.

One request: match the route (404, or 405 with `Allow`), check the API key and
rate limit, check its headers can be gRPC metadata (400 naming the header),
read the body (415 for a non-JSON content type, 413 past the limit), transcode
(400 naming the field), take an in-flight slot (503 when it cannot within its
deadline: limits.py), call the upstream with the client's metadata and
deadline, and answer with the response as proto3 JSON (or the error in the
shape of `errors.py`). Server-streaming RPCs answer with newline-delimited
JSON, or Server-Sent Events for `Accept: text/event-stream`; client- and
bidi-streaming RPCs take one JSON request per line of the body
(`_RequestLines`); a client that goes away cancels the upstream call. A stream
counts against its API key's cap (429).

Anything unexpected becomes a 500 with a correlation id, logged with its
traceback; a client never sees a stack trace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

import grpc
from google.protobuf.message import Message

from services.runtime import log, principal
from services.runtime.config import GatewayConfig
from services.runtime.context import ADMIN

from . import errors, headers, limits, routes, transcode
from .api import Api
from .routes import Binding, Match, RouteTable
from .upstream import Metadata, Requests, Stream, Upstreams

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_log = log.get_logger("rideshare.gateway")
_JSON = (b"content-type", b"application/json")
_NDJSON = (b"content-type", b"application/x-ndjson")
_SSE = (b"content-type", b"text/event-stream")
_NO_CACHE = (b"cache-control", b"no-cache")


class _ClientGone(Exception):
    """The client disconnected before its request was read."""


@dataclass(frozen=True)
class Admission:
    """Who a guard let in: the visibility labels they are granted, headers for the response, and who
    the call is for (`x-mesh-*` metadata, services/runtime/principal.py)."""

    labels: frozenset[str] = frozenset()
    headers: Headers = field(default_factory=list)
    owners: tuple[str, ...] = ()
    """Whose streams a stream of this request counts against, each capped at `max_streams_per_key`:
    the API key; an end user acting through it is one more owner, with a cap of its own."""
    claims: tuple[tuple[str, str], ...] = ()


NO_AUTH = Admission(claims=((principal.APP, "-"), (principal.SCOPES, ADMIN)))
"""Without a guard (`mesh gateway --no-auth`, local use only) whoever reaches the port is an operator."""


class Guard(Protocol):
    """Decides whether a request may reach the API (API keys, rate limits), and which part of it."""

    def admit(self, request_headers: Headers, query: str) -> Admission:
        """The caller's admission, or raise `errors.HttpError`."""
        ...


class Page(Protocol):
    """A fixed endpoint of the bridge itself (`/openapi.json`, `/docs`)."""

    async def __call__(self, path: str) -> tuple[int, Headers, bytes]: ...


@dataclass
class Gateway:
    """The ASGI application."""

    api: Api
    table: RouteTable
    upstreams: Upstreams
    settings: GatewayConfig = field(default_factory=GatewayConfig)
    """`[gateway]` of the mesh file: the limits the bridge enforces."""
    guard: Guard | None = None
    pages: dict[str, Page] = field(default_factory=dict)
    """Extra GET endpoints by exact path (documentation); `/healthz` is built in."""

    def __post_init__(self) -> None:
        self._labels = routes.labels_of(self.api)
        """Every visibility label the API's methods are restricted to."""
        self._tables: dict[frozenset[str], RouteTable] = {frozenset(): self.table}
        everything = self.table_for(self._labels - {routes.INTERNAL})
        self.upstreams.prepare({b.rpc.path: b.rpc for b in everything.bindings}.values())
        self._any_origin = "*" in self.settings.cors_origins
        self._origins = {o.encode() for o in self.settings.cors_origins}
        self.in_flight = limits.InFlight(self.settings.max_in_flight, self.settings.max_queue_wait)
        self.lag = limits.LoopLag(self.settings.max_lag)
        self.streams = limits.StreamCaps(self.settings.max_streams_per_key)
        self.refusals = limits.Refusals("the gateway's limits")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope["path"]
        request_headers: Headers = scope["headers"]
        cors = self._cors(request_headers)
        try:
            if method in ("GET", "HEAD") and (path == "/healthz" or path in self.pages):
                await self._page(path, cors, send)
                return
            self.lag.start()
            self.lag.check()  # before the key is looked up or the body read
            query = scope["query_string"].decode("latin-1")
            if method == "OPTIONS":  # a browser's preflight carries no key
                admitted = Admission()
            elif self.guard is None:
                admitted = NO_AUTH
            else:
                admitted = self.guard.admit(request_headers, query)
            table = self.table_for(admitted.labels)
            match = table.match(method, path)
            if match is None:
                await self._no_route(table, method, path, request_headers, cors, send)
                return
            client = scope.get("client")
            address = ((principal.CLIENT, str(client[0])),) if client else ()
            await self._call(match, query, request_headers, receive, send, cors, admitted, address)
        except errors.HttpError as exc:
            if exc.refusal:
                self.refusals.count(exc)
            await _send_error(send, exc, cors)
        except _ClientGone:
            return
        except Exception as exc:
            correlation_id, error = errors.internal()
            _log.error(
                "unhandled error in the gateway",
                exc_info=exc,
                extra={"fields": {"correlation_id": correlation_id, "method": method, "path": path}},
            )
            await _send_error(send, error, cors)

    async def _call(
        self,
        match: Match,
        query: str,
        request_headers: Headers,
        receive: Receive,
        send: Send,
        cors: Headers,
        admitted: Admission,
        address: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """`address`: the client's address as metadata (`x-mesh-client`), for sign-in throttling."""
        binding, extra, owners = match.binding, cors + admitted.headers, admitted.owners
        try:
            metadata, grpc_timeout = headers.request_metadata(request_headers)
            if self.guard is not None:  # the guard read the bearer token; the services get its user
                metadata = [(k, v) for k, v in metadata if k != "authorization"]
            metadata += admitted.claims
            metadata += address
            timeout_param = _query_value(query, "timeout") if "timeout=" in query else None
            timeout = headers.parse_timeout(grpc_timeout, timeout_param, self.settings.max_timeout)
        except headers.HeaderError as exc:
            raise errors.bad_request(transcode.BadRequest.one(exc.field, exc.description)) from None
        if binding.rpc.client_streaming:
            lines = _RequestLines(match, query, receive, self.settings.max_body_bytes)
            _check_content_type(next((v for k, v in request_headers if k == b"content-type"), b""), True)
            self.streams.enter(owners)
            try:
                await self._stream(
                    binding, lines.messages(), metadata, timeout, request_headers, send, extra, lines
                )
            finally:
                self.streams.leave(owners)
            return
        unary = not binding.rpc.server_streaming
        if unary:
            # A call that cannot start in time is not even read.
            self.in_flight.check(timeout, binding.continues)
        body = await self._read_body(binding, request_headers, receive) if binding.has_body else b""
        try:
            request = transcode.decode_request(binding, match.values, query, body)
        except transcode.BadRequest as exc:
            raise errors.bad_request(exc) from None
        if not unary:
            lines = _RequestLines(match, query, receive, 0, read=True)
            self.streams.enter(owners)
            try:
                await self._stream(binding, request, metadata, timeout, request_headers, send, extra, lines)
            finally:
                self.streams.leave(owners)
            return
        # A unary call takes an in-flight slot; past the cap it waits while its deadline allows,
        # and a call that continues work goes before one that starts it (limits.py).
        in_flight = self.in_flight
        if not in_flight.try_enter(binding.continues):
            waited = await in_flight.wait(timeout, binding.continues)
            if timeout is not None:
                timeout -= waited
        since = time.monotonic()
        try:
            await self._unary(binding, request, metadata, timeout, send, extra)
        finally:
            in_flight.leave(since)

    async def _unary(
        self,
        binding: Binding,
        request: Message,
        metadata: headers.Metadata,
        deadline: float | None,
        send: Send,
        extra: Headers,
    ) -> None:
        call = self.upstreams.unary(binding.rpc)
        if call is None:
            raise _no_upstream(binding)
        try:
            reply = await call(request, deadline, metadata)
        except grpc.aio.AioRpcError as exc:
            raise _upstream_error(exc) from None
        payload = transcode.dumps(binding.encode(reply.message))
        response_headers = [_JSON, (b"content-length", str(len(payload)).encode())]
        if reply.initial_metadata or reply.trailing_metadata:
            response_headers += headers.response_headers(reply.initial_metadata, reply.trailing_metadata)
        await send({"type": "http.response.start", "status": 200, "headers": response_headers + extra})
        await send({"type": "http.response.body", "body": payload})

    async def _stream(
        self,
        binding: Binding,
        requests: Requests,
        metadata: headers.Metadata,
        deadline: float | None,
        request_headers: Headers,
        send: Send,
        extra: Headers,
        lines: _RequestLines,
    ) -> None:
        """A streaming call of any kind; `lines` reads the request body (if it is a stream) and
        then watches for the client going away."""
        open_stream = self.upstreams.stream(binding.rpc)
        if open_stream is None:
            raise _no_upstream(binding)
        sse = any(k == b"accept" and b"text/event-stream" in v for k, v in request_headers)
        try:
            call = await open_stream(requests, deadline, metadata)
        except grpc.aio.AioRpcError as exc:
            raise lines.failure_or(exc) from None
        disconnected = asyncio.Event()
        watcher = asyncio.ensure_future(lines.watch(call, disconnected))
        started = False
        try:
            # Until the upstream sends its headers, a failure can still be a proper HTTP error.
            try:
                initial = await call.initial_metadata()
                if not binding.rpc.server_streaming:
                    await self._one_answer(binding, call, initial, send, extra)
                    return
            except grpc.aio.AioRpcError as exc:
                raise lines.failure_or(exc) from None
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        _SSE if sse else _NDJSON,
                        _NO_CACHE,
                        *headers.response_headers(initial, None),
                        *extra,
                    ],
                }
            )
            started = True
            # ASGI servers hold the head until a body part comes: send it now, before any message.
            await send({"type": "http.response.body", "body": b"", "more_body": True})
            quiet = _Quiet(send, self.settings.sse_keepalive) if sse and self.settings.sse_keepalive else None
            try:
                async for message in call:
                    value = binding.encode(message)
                    await send({"type": "http.response.body", "body": _event(value, sse), "more_body": True})
                    if quiet is not None:
                        quiet.spoke()
            except grpc.aio.AioRpcError as exc:
                if disconnected.is_set():
                    return
                error = lines.failure_or(exc)
                await send(
                    {"type": "http.response.body", "body": _error_event(error, sse), "more_body": True}
                )
            finally:
                if quiet is not None:
                    quiet.stop()
            await send({"type": "http.response.body", "body": b""})
        except asyncio.CancelledError:
            # grpc.aio answers a cancelled call by cancelling whoever awaits it: the client went
            # away, or its request stream failed (a bad line).
            if disconnected.is_set() or lines.gone:
                return
            if lines.failure is None:
                raise
            error = lines.failure_or(None)
            if not started:
                raise error from None
            await send({"type": "http.response.body", "body": _error_event(error, sse)})
        finally:
            watcher.cancel()
            call.cancel()

    async def _one_answer(
        self, binding: Binding, call: Stream, initial: Metadata, send: Send, extra: Headers
    ) -> None:
        """The answer of a client-streaming call, as JSON like a unary one."""
        answer = await anext(aiter(call))  # grpc.aio gives exactly one, or raises
        payload = transcode.dumps(binding.encode(answer))
        response_headers = [_JSON, (b"content-length", str(len(payload)).encode())]
        response_headers += headers.response_headers(initial, await call.trailing_metadata())
        await send({"type": "http.response.start", "status": 200, "headers": response_headers + extra})
        await send({"type": "http.response.body", "body": payload})

    async def _read_body(self, binding: Binding, request_headers: Headers, receive: Receive) -> bytes:
        limit = self.settings.max_body_bytes
        content_type = b""
        length = -1
        for key, value in request_headers:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                length = int(value) if value.isdigit() else -1
        if length > limit:
            raise _too_large(limit)
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            body = await self._rest_of_body(body, limit, receive)
        elif len(body) > limit:
            raise _too_large(limit)
        if body:
            _check_content_type(content_type, streaming=False)
        return body

    async def _rest_of_body(self, first: bytes, limit: int, receive: Receive) -> bytes:
        chunks = [first]
        size = len(first)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def table_for(self, labels: frozenset[str]) -> RouteTable:
        """The routes of callers granted `labels`: public ones, and those restricted to a label they hold."""
        granted = labels & self._labels
        table = self._tables.get(granted)
        if table is None:
            table = self._tables[granted] = routes.build(self.api, granted)
        return table

    async def _no_route(
        self, table: RouteTable, method: str, path: str, request_headers: Headers, cors: Headers, send: Send
    ) -> None:
        allowed = table.allowed(path)
        if not allowed:
            raise errors.not_found(path)
        if method == "OPTIONS" and cors:
            await _send(send, 204, [*cors, *_preflight(allowed, request_headers)], b"")
            return
        raise errors.method_not_allowed(method, allowed)

    async def _page(self, path: str, cors: Headers, send: Send) -> None:
        if path == "/healthz":
            status, page_headers, body = await self.healthz()
        else:
            status, page_headers, body = await self.pages[path](path)
        await _send(send, status, [*page_headers, *cors], body)

    async def healthz(self) -> tuple[int, Headers, bytes]:
        """200 when every upstream is SERVING, else 503; the body says which is not."""
        states = await self.upstreams.health()
        serving = bool(states) and all(s == "SERVING" for s in states.values())
        body = {"status": "SERVING" if serving else "NOT_SERVING", "upstreams": states}
        return (200 if serving else 503), [_JSON], transcode.dumps(body)

    def _cors(self, request_headers: Headers) -> Headers:
        if not self._origins:
            return []
        for key, value in request_headers:
            if key == b"origin":
                if self._any_origin:
                    return [(b"access-control-allow-origin", b"*"), (b"access-control-expose-headers", b"*")]
                if value in self._origins:
                    return [
                        (b"access-control-allow-origin", value),
                        (b"access-control-expose-headers", b"*"),
                        (b"vary", b"origin"),
                    ]
                return []
        return []


class _Quiet:
    """Sends an SSE comment (`: keep-alive`) when a stream has said nothing for `interval`."""

    def __init__(self, send: Send, interval: float) -> None:
        self.send = send
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.task = asyncio.ensure_future(self._run())

    def spoke(self) -> None:
        self.last = self.loop.time()

    def stop(self) -> None:
        self.task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.last + self.interval - self.loop.time())
            if self.loop.time() - self.last >= self.interval:
                await self.send(
                    {"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True}
                )
                self.last = self.loop.time()


class _RequestLines:
    """The request body of a streaming call, and the watch for the client going away.

    For a client- or bidi-streaming RPC the body is a stream of requests, one JSON object per
    line (NDJSON), each decoded like a unary body with the path and query values, and sent
    upstream as it arrives; a line longer than the body limit is refused (413). A bad line
    fails the call: it is cancelled, and the client gets the 400 naming the line and field.
    With `read` the body was read already (server streaming): only the watch remains.
    """

    def __init__(self, match: Match, query: str, receive: Receive, limit: int, read: bool = False) -> None:
        self.binding = match.binding
        self.values = match.values
        self.query = query
        self.receive = receive
        self.limit = limit
        self.read = asyncio.Event()
        if read:
            self.read.set()
        self.failure: transcode.BadRequest | errors.HttpError | None = None
        self.gone = False
        """The client went away while sending."""

    async def messages(self) -> AsyncIterator[Message]:
        try:
            async for message in self._messages():
                yield message
        except _ClientGone:
            self.gone = True
            raise
        except (transcode.BadRequest, errors.HttpError) as exc:
            self.failure = exc
            raise

    async def _messages(self) -> AsyncIterator[Message]:
        pending = b""
        number = 0
        more = True
        while more:
            event = await self.receive()
            if event["type"] == "http.disconnect":
                raise _ClientGone
            pending += event.get("body", b"")
            more = event.get("more_body", False)
            if b"\n" in pending:
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    number += 1
                    if line.strip():
                        yield self._decode(line, number)
            if len(pending) > self.limit:
                raise _too_large(self.limit, f"line {number + 1} of the body")
        self.read.set()
        if pending.strip():
            yield self._decode(pending, number + 1)

    def _decode(self, line: bytes, number: int) -> Message:
        if len(line) > self.limit:
            raise _too_large(self.limit, f"line {number} of the body")
        try:
            return transcode.decode_request(self.binding, self.values, self.query, line)
        except transcode.BadRequest as exc:
            # "line 3 of the body: malformed JSON ...", not "... body: body: malformed JSON ...".
            problems = "; ".join(
                v.description if v.field == "body" else f"{v.field}: {v.description}" for v in exc.violations
            )
            raise transcode.BadRequest(exc.violations, f"line {number} of the body: {problems}") from None

    def failure_or(self, error: grpc.aio.AioRpcError | None) -> errors.HttpError:
        """What to tell the client of a failed call: the bad request line if that ended it."""
        failure = self.failure
        if isinstance(failure, transcode.BadRequest):
            return errors.bad_request(failure)
        if failure is not None:
            return failure
        if self.gone:
            raise _ClientGone
        assert error is not None
        return _upstream_error(error)

    async def watch(self, call: Stream, disconnected: asyncio.Event) -> None:
        """Once the body is read, cancel the upstream call as soon as the client goes away."""
        await self.read.wait()
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                call.cancel()
                return


def _upstream_error(exc: grpc.aio.AioRpcError) -> errors.HttpError:
    error = errors.from_status(exc.code(), exc.details(), exc.trailing_metadata())
    error.headers += headers.response_headers(exc.initial_metadata(), exc.trailing_metadata())
    return error


def _event(value: Any, sse: bool) -> bytes:
    if sse:
        return b"data: " + transcode.dumps(value) + b"\n\n"
    return transcode.dumps({"result": value}) + b"\n"


def _error_event(error: errors.HttpError, sse: bool) -> bytes:
    if sse:
        return b"event: error\ndata: " + error.encode() + b"\n\n"
    return transcode.dumps({"error": error.body()}) + b"\n"


def _preflight(allowed: list[str], request_headers: Headers) -> Headers:
    out = [
        (b"access-control-allow-methods", ", ".join(allowed).encode()),
        (b"access-control-max-age", b"600"),
    ]
    for key, value in request_headers:
        if key == b"access-control-request-headers":
            out.append((b"access-control-allow-headers", value))
    return out


def _check_content_type(content_type: bytes, streaming: bool) -> None:
    """415 unless the body is JSON (or, for a stream of requests, newline-delimited JSON)."""
    if _is_json(content_type):
        return
    if streaming and content_type.split(b";", 1)[0].strip().lower() in _NDJSON_MEDIA:
        return
    expected = "application/x-ndjson or application/json" if streaming else "application/json"
    raise errors.HttpError(
        415,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"unsupported content type {content_type.decode('latin-1') or '(none)'!r}; "
        f"send Content-Type: {expected}",
        reason="UNSUPPORTED_MEDIA_TYPE",
    )


_NDJSON_MEDIA = (b"application/x-ndjson", b"application/jsonl", b"application/jsonlines")


def _is_json(content_type: bytes) -> bool:
    known = _JSON_MEDIA.get(content_type)
    if known is None:
        media = content_type.split(b";", 1)[0].strip().lower()
        known = media in (b"", b"application/json") or (
            media.startswith(b"application/") and media.endswith(b"+json")
        )
        if len(_JSON_MEDIA) < 256:
            _JSON_MEDIA[content_type] = known
    return known


_JSON_MEDIA: dict[bytes, bool] = {}
"""Content-Type header values seen, and whether they are JSON."""


def _query_value(query: str, key: str) -> str | None:
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == key:
            return value
    return None


def _too_large(limit: int, what: str = "the body") -> errors.HttpError:
    return errors.HttpError(
        413,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"{what} is larger than {limit} bytes",
        reason="BODY_TOO_LARGE",
    )


def _no_upstream(binding: Binding) -> errors.HttpError:
    return errors.HttpError(
        503,
        grpc.StatusCode.UNAVAILABLE,
        f"no upstream serves {binding.rpc.service.full_name}",
        reason="NO_UPSTREAM",
    )


async def _send(send: Send, status: int, response_headers: Headers, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *response_headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, error: errors.HttpError, cors: Headers) -> None:
    await _send(send, error.status, [_JSON, *error.headers, *cors], error.encode())


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
