"""The gRPC side: a prepared call per RPC, on whatever reaches the service that serves it.

Inside the mesh the calls go through the mesh client's grpc.aio channels
(`services.runtime.client.Clients`: TLS, round robin over replicas, health-aware
routing, retries on UNAVAILABLE for safe methods, the mesh's default
deadlines, telemetry). In front of other servers (`--upstream HOST:PORT`) they
go through the bridge's own HTTP/2 client (`wire.py`), with the mesh's retry
settings for safe methods and a retry budget per upstream.

Either way an RPC is a coroutine function prepared once at start-up:
`unary(rpc)(request, timeout, metadata) -> Reply` or, for every streaming
kind, `stream(rpc)(requests, timeout, metadata) -> Stream`, where `requests`
is one message (server streaming) or an async iterable of them (client and
bidi streaming; a client-streaming call's Stream yields its one answer).
Failures are `wire.RpcError` whichever client made the call.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor as d
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2

from services.runtime.client import Clients, is_safe_to_retry
from services.runtime.config import MeshConfig, RetryBudgetConfig, RetryConfig
from services.runtime.errors import ConfigError
from services.runtime.telemetry import Telemetry

from . import wire
from .api import Api
from .routes import Rpc
from .upstream_tls import UpstreamTls
from .wire import Metadata, RpcError

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


@dataclass(frozen=True)
class Reply:
    """A unary call's answer."""

    message: Message
    initial_metadata: Metadata
    trailing_metadata: Metadata


class Stream(Protocol):
    """A server-streaming call being read."""

    async def initial_metadata(self) -> Metadata:
        """When the server has answered; RpcError if it refused the call outright."""
        ...

    def __aiter__(self) -> AsyncIterator[Message]: ...

    async def trailing_metadata(self) -> Metadata:
        """Once the call is over."""
        ...

    def cancel(self) -> None: ...


Requests = Message | AsyncIterator[Message]
"""One request, or a stream of them (client- and bidi-streaming RPCs)."""
Unary = Callable[[Message, float | None, Metadata], Awaitable[Reply]]
OpenStream = Callable[[Requests, float | None, Metadata], Awaitable[Stream]]


class Caller(Protocol):
    """Makes the calls to one upstream."""

    def unary(self, rpc: Rpc) -> Unary: ...

    def stream(self, rpc: Rpc) -> OpenStream: ...

    async def health(self, wait: float) -> str: ...

    async def close(self) -> None: ...


@dataclass
class Upstreams:
    """Who serves each service, and the prepared call of every RPC."""

    callers: dict[str, Caller]
    """Upstream name (a mesh service, or HOST:PORT) -> its caller."""
    routes: dict[str, str]
    """Service full name -> upstream name."""
    problems: list[str] = field(default_factory=list)
    """Services of the API that no upstream serves (their routes answer 503)."""
    _unary: dict[str, Unary] = field(default_factory=dict)
    _stream: dict[str, OpenStream] = field(default_factory=dict)

    def prepare(self, rpcs: Iterable[Rpc]) -> None:
        """Prepare the call of every RPC whose service has an upstream."""
        for rpc in rpcs:
            upstream = self.routes.get(rpc.service.full_name)
            if upstream is None:
                continue
            caller = self.callers[upstream]
            if rpc.server_streaming or rpc.client_streaming:
                self._stream[rpc.path] = caller.stream(rpc)
            else:
                self._unary[rpc.path] = caller.unary(rpc)

    def unary(self, rpc: Rpc) -> Unary | None:
        """The prepared unary call of an RPC, or None when no upstream serves it."""
        return self._unary.get(rpc.path)

    def stream(self, rpc: Rpc) -> OpenStream | None:
        """The prepared call of a streaming RPC (any kind), or None when no upstream serves it."""
        return self._stream.get(rpc.path)

    async def health(self, wait: float = 1.0) -> dict[str, str]:
        """SERVING / NOT_SERVING / DOWN of every upstream, checked at once."""
        names = list(self.callers)
        results = await asyncio.gather(*(self.callers[n].health(wait) for n in names))
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        callers, self.callers = list(self.callers.values()), {}
        for caller in callers:
            await caller.close()


# -- inside the mesh: grpc.aio channels of the mesh client ------------------------------------------


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _rpc_error(exc: grpc.aio.AioRpcError) -> RpcError:
    return RpcError(
        exc.code(),
        exc.details() or "",
        tuple(exc.initial_metadata() or ()),
        tuple(exc.trailing_metadata() or ()),
    )


class AioCaller:
    """Calls on a grpc.aio channel (the mesh client's, which closes it)."""

    def __init__(self, channel: grpc.aio.Channel, owned: bool = False) -> None:
        self.channel = channel
        self.owned = owned

    def unary(self, rpc: Rpc) -> Unary:
        method = self.channel.unary_unary(
            rpc.path, request_serializer=_serialize, response_deserializer=rpc.response_class.FromString
        )

        async def call(request: Message, seconds: float | None, metadata: Metadata) -> Reply:
            pending = method(request, timeout=seconds, metadata=metadata)
            try:
                response = await pending
            except grpc.aio.AioRpcError as exc:
                raise _rpc_error(exc) from None
            initial = await pending.initial_metadata()
            trailing = await pending.trailing_metadata()
            return Reply(response, tuple(initial or ()), tuple(trailing or ()))

        return call

    def stream(self, rpc: Rpc) -> OpenStream:
        kind: Any = (
            self.channel.stream_stream
            if rpc.client_streaming and rpc.server_streaming
            else self.channel.stream_unary
            if rpc.client_streaming
            else self.channel.unary_stream
        )
        method: Any = kind(
            rpc.path, request_serializer=_serialize, response_deserializer=rpc.response_class.FromString
        )
        one_answer = not rpc.server_streaming

        async def open_stream(requests: Requests, seconds: float | None, metadata: Metadata) -> Stream:
            return _AioStream(method(requests, timeout=seconds, metadata=metadata), one_answer)

        return open_stream

    async def health(self, wait: float) -> str:
        check = self.channel.unary_unary(
            _HEALTH_CHECK,
            request_serializer=_serialize,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            response = await check(health_pb2.HealthCheckRequest(service=""), timeout=wait)
        except grpc.aio.AioRpcError as exc:
            return "NOT_SERVING" if exc.code() == grpc.StatusCode.NOT_FOUND else "DOWN"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def close(self) -> None:
        if self.owned:
            await self.channel.close()


class _AioStream:
    def __init__(self, call: Any, one_answer: bool) -> None:
        self.call = call
        self.one_answer = one_answer

    async def initial_metadata(self) -> Metadata:
        try:
            initial = await self.call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(exc) from None
        if self.call.done():
            code = await self.call.code()
            if code != grpc.StatusCode.OK:
                details = await self.call.details()
                trailing = await self.call.trailing_metadata()
                raise RpcError(code, details or "", tuple(initial or ()), tuple(trailing or ()))
        return tuple(initial or ())

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        try:
            if self.one_answer:
                yield await self.call
                return
            async for message in self.call:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(exc) from None

    async def trailing_metadata(self) -> Metadata:
        return tuple(await self.call.trailing_metadata() or ())

    def cancel(self) -> None:
        if not self.call.done():
            self.call.cancel()


def in_mesh(config: MeshConfig, api: Api, telemetry: Telemetry | None = None) -> tuple[Upstreams, Clients]:
    """Upstreams on the mesh client's channels: each service goes to the mesh service of its package."""
    clients = Clients(config, caller="gateway", telemetry=telemetry)
    upstreams = Upstreams(callers={}, routes={})
    for service in api.services:
        try:
            target = clients.target_service(service)
        except ConfigError:
            upstreams.problems.append(
                f"{service.full_name}: no service in the mesh serves {service.file.package}"
            )
            continue
        siblings = [s for s in api.services if s.file.package == service.file.package]
        if target.name not in upstreams.callers:
            upstreams.callers[target.name] = AioCaller(clients.channel(target, siblings))
        upstreams.routes[service.full_name] = target.name
    return upstreams, clients


# -- in front of other servers: the bridge's own HTTP/2 client --------------------------------------


class RetryBudget:
    """gRPC's `retryThrottling` for one upstream: no retries while the tokens are at or below half."""

    def __init__(self, config: RetryBudgetConfig) -> None:
        self.max_tokens = float(config.max_tokens)
        self.ratio = config.token_ratio
        self.tokens = self.max_tokens

    def failed(self) -> bool:
        """Count a failure; whether a retry is still allowed."""
        self.tokens = max(0.0, self.tokens - 1)
        return self.tokens > self.max_tokens / 2

    def succeeded(self) -> None:
        if self.tokens < self.max_tokens:
            self.tokens = min(self.max_tokens, self.tokens + self.ratio)


class WireCaller:
    """Calls to one `--upstream` server through `wire.Channel`."""

    def __init__(
        self, address: str, retry: RetryConfig, budget: RetryBudgetConfig, tls: UpstreamTls | None = None
    ) -> None:
        self.channel = wire.Channel(address, tls=tls)
        self.retry = retry
        self.budget = RetryBudget(budget)

    def unary(self, rpc: Rpc) -> Unary:
        path = rpc.path.encode()
        parse = rpc.response_class.FromString
        safe = self.retry.max_attempts > 1 and is_safe_to_retry(rpc.descriptor)
        keyed = _has_request_id(rpc.descriptor.input_type)
        channel, budget = self.channel, self.budget

        async def call(request: Message, seconds: float | None, metadata: Metadata) -> Reply:
            if keyed and not request.request_id:  # type: ignore[attr-defined]
                # Like the mesh client: a write without an idempotency key gets one, so a
                # retry can never apply it twice (AIP-155).
                request.request_id = str(uuid.uuid4())  # type: ignore[attr-defined]
            deadline = None if seconds is None else asyncio.get_running_loop().time() + seconds
            body = request.SerializeToString()
            fields = wire.encode_metadata(metadata) if metadata else []
            attempt = 1
            while True:
                try:
                    raw, initial, trailing = await channel.unary(path, body, fields, deadline)
                    break
                except RpcError as exc:
                    attempt += 1
                    if not await self._again(exc, safe, attempt, deadline):
                        raise
            budget.succeeded()
            try:
                message = parse(raw)
            except DecodeError:
                raise RpcError(
                    grpc.StatusCode.INTERNAL, "the response is not a valid message", initial, trailing
                ) from None
            return Reply(message, initial, trailing)

        return call

    async def _again(self, error: RpcError, safe: bool, attempt: int, deadline: float | None) -> bool:
        """Whether to send a failed call again (after the backoff, if so).

        UNAVAILABLE is retried for safe methods (up to `max_attempts`), and once for any
        method the server never started on (refused, or past its GOAWAY), like grpc's
        transparent retry; a failure counts against the retry budget either way.
        """
        if error.code is not grpc.StatusCode.UNAVAILABLE or not (safe or error.unprocessed):
            return False
        limit = max(self.retry.max_attempts, 2) if safe else 2
        if not self.budget.failed() or attempt > limit:
            return False
        retry = self.retry
        ceiling = min(retry.initial_backoff * retry.backoff_multiplier ** (attempt - 2), retry.max_backoff)
        pause = random.uniform(0, ceiling)
        if deadline is not None and asyncio.get_running_loop().time() + pause >= deadline:
            return False
        await asyncio.sleep(pause)
        return True

    def stream(self, rpc: Rpc) -> OpenStream:
        path = rpc.path.encode()
        parse = rpc.response_class.FromString
        channel = self.channel
        server_streaming = rpc.server_streaming

        async def open_stream(requests: Requests, seconds: float | None, metadata: Metadata) -> Stream:
            deadline = None if seconds is None else asyncio.get_running_loop().time() + seconds
            fields = wire.encode_metadata(metadata) if metadata else []
            if isinstance(requests, Message):
                opened = await channel.open_stream(path, requests.SerializeToString(), fields, deadline)
                return _WireStream(opened, parse)
            opened = await channel.open_stream(path, None, fields, deadline, server_streaming)
            return _WireStream(opened, parse, asyncio.ensure_future(_send_all(opened, requests)))

        return open_stream

    async def health(self, wait: float) -> str:
        deadline = asyncio.get_running_loop().time() + wait
        request = health_pb2.HealthCheckRequest(service="").SerializeToString()
        try:
            raw, _, _ = await self.channel.unary(_HEALTH_CHECK.encode(), request, [], deadline)
            response = health_pb2.HealthCheckResponse.FromString(raw)
        except RpcError as exc:
            return "NOT_SERVING" if exc.code is grpc.StatusCode.NOT_FOUND else "DOWN"
        except DecodeError:
            return "DOWN"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def close(self) -> None:
        await self.channel.close()


async def _send_all(call: wire.StreamingCall, requests: AsyncIterator[Message]) -> None:
    """Send the requests as they come, then the end of them; cancel the call if they fail.

    Like grpc.aio with a request iterator that raises: the call ends CANCELLED, and whoever
    produced the requests knows why (the bridge answers 400 for a malformed line).
    """
    try:
        async for request in requests:
            if not await call.send(request.SerializeToString()):
                return
        call.end_requests()
    except BaseException:
        call.cancel()
        raise


class _WireStream:
    def __init__(
        self,
        stream: wire.StreamingCall,
        parse: Callable[[bytes], Message],
        sender: asyncio.Future[None] | None = None,
    ) -> None:
        self.stream = stream
        self.parse = parse
        self.sender = sender
        if sender is not None:
            sender.add_done_callback(_retrieve)

    async def initial_metadata(self) -> Metadata:
        return await self.stream.initial_metadata()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        async for raw in self.stream:
            try:
                yield self.parse(raw)
            except DecodeError:
                self.stream.cancel()
                raise RpcError(grpc.StatusCode.INTERNAL, "a message of the stream is not valid") from None

    async def trailing_metadata(self) -> Metadata:
        return self.stream.trailing_metadata

    def cancel(self) -> None:
        self.stream.cancel()
        if self.sender is not None:
            self.sender.cancel()


def _retrieve(sender: asyncio.Future[None]) -> None:
    """The sender's failure is the request producer's to report; here it is only collected."""
    if not sender.cancelled():
        sender.exception()


def _has_request_id(message: d.Descriptor) -> bool:
    field = message.fields_by_name.get("request_id")
    return field is not None and field.type == d.FieldDescriptor.TYPE_STRING and not field.is_repeated


def direct(
    config: MeshConfig,
    api: Api,
    addresses: list[str],
    served: Mapping[str, Iterable[str]] | None,
    tls: UpstreamTls | None = None,
) -> Upstreams:
    """Callers for `addresses` (over TLS with `tls`); `served` says which services each lists
    (None: all go to the only one)."""
    routes: dict[str, str] = {}
    problems: list[str] = []
    for service in api.services:
        owners = (
            addresses[:1]
            if served is None
            else [a for a in addresses if service.full_name in served.get(a, ())]
        )
        if owners:
            routes[service.full_name] = owners[0]
        else:
            problems.append(f"{service.full_name}: no upstream lists it")
    callers: dict[str, Caller] = {}
    for address in addresses:
        try:
            callers[address] = WireCaller(address, config.client.retry, config.client.retry_budget, tls)
        except ValueError:
            raise ConfigError("--upstream", "--upstream", f"expected HOST:PORT, got {address!r}") from None
    return Upstreams(callers=callers, routes=routes, problems=problems)
