"""The gRPC side: a prepared call per RPC, on the runtime client's channel to whoever serves it.

Every upstream is a grpc.aio channel of `services.runtime.client.Clients`: in
the mesh, the channel to the mesh service of the contract's package; in front
of other servers (`--upstream HOST:PORT`), the channel to that address, over
TLS when `upstream_tls.py` says so. The runtime's client does the rest for
both: round robin, health-aware routing, outlier ejection, retries on
UNAVAILABLE for safe methods with one retry budget, the default and
`[client.methods]` timeouts, a `request_id` for writes sent without one, and
telemetry (`gateway -> service` edges). Nothing here repeats any of it.

An RPC is a coroutine function prepared once at start-up:
`unary(rpc)(request, timeout, metadata) -> Reply` or, for every streaming
kind, `stream(rpc)(requests, timeout, metadata) -> Stream`, where `requests`
is one message (server streaming) or an async iterable of them (client and
bidi streaming; a client-streaming call's Stream yields its one answer).
Failures are grpc's own `grpc.aio.AioRpcError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from services.runtime.client import Clients
from services.runtime.config import MeshConfig
from services.runtime.errors import ConfigError
from services.runtime.telemetry import Telemetry

from .api import Api
from .routes import Rpc
from .upstream_tls import UpstreamTls

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"

Metadata = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Reply:
    """A unary call's answer."""

    message: Message
    initial_metadata: Metadata
    trailing_metadata: Metadata


Requests = Message | AsyncIterator[Message]
"""One request, or a stream of them (client- and bidi-streaming RPCs)."""
Unary = Callable[[Message, float | None, Metadata], Awaitable[Reply]]
OpenStream = Callable[[Requests, float | None, Metadata], Awaitable["Stream"]]


class Stream:
    """A streaming call (any kind) being read."""

    def __init__(self, call: Any, one_answer: bool) -> None:
        self.call = call
        self.one_answer = one_answer

    async def initial_metadata(self) -> Metadata:
        """When the server has answered; AioRpcError if it refused the call outright.

        grpc.aio hands out a refused call's (empty) initial metadata without complaint, so
        a call that is over already is checked for its status here.
        """
        initial = await self.call.initial_metadata()
        if self.call.done():
            code = await self.call.code()
            if code != grpc.StatusCode.OK:
                trailing = await self.call.trailing_metadata()
                details = await self.call.details()
                raise grpc.aio.AioRpcError(code, initial, trailing, details)
        return tuple(initial or ())

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        if self.one_answer:
            yield await self.call
            return
        async for message in self.call:
            yield message

    async def trailing_metadata(self) -> Metadata:
        """Once the call is over."""
        return tuple(await self.call.trailing_metadata() or ())

    def cancel(self) -> None:
        if not self.call.done():
            self.call.cancel()


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _unary(channel: grpc.aio.Channel, rpc: Rpc) -> Unary:
    method = channel.unary_unary(
        rpc.path, request_serializer=_serialize, response_deserializer=rpc.response_class.FromString
    )

    async def call(request: Message, seconds: float | None, metadata: Metadata) -> Reply:
        pending = method(request, timeout=seconds, metadata=metadata)
        response = await pending
        initial = await pending.initial_metadata()
        trailing = await pending.trailing_metadata()
        return Reply(response, tuple(initial or ()), tuple(trailing or ()))

    return call


def _stream(channel: grpc.aio.Channel, rpc: Rpc) -> OpenStream:
    kind: Any = (
        channel.stream_stream
        if rpc.client_streaming and rpc.server_streaming
        else channel.stream_unary
        if rpc.client_streaming
        else channel.unary_stream
    )
    method: Any = kind(
        rpc.path, request_serializer=_serialize, response_deserializer=rpc.response_class.FromString
    )
    one_answer = not rpc.server_streaming

    async def open_stream(requests: Requests, seconds: float | None, metadata: Metadata) -> Stream:
        return Stream(method(requests, timeout=seconds, metadata=metadata), one_answer)

    return open_stream


async def _health(channel: grpc.aio.Channel, wait: float) -> str:
    check = channel.unary_unary(
        _HEALTH_CHECK,
        request_serializer=_serialize,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    try:
        response = await check(health_pb2.HealthCheckRequest(service=""), timeout=wait)
    except grpc.aio.AioRpcError as exc:
        return "NOT_SERVING" if exc.code() == grpc.StatusCode.NOT_FOUND else "DOWN"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


@dataclass
class Upstreams:
    """Who serves each service, and the prepared call of every RPC."""

    clients: Clients
    """Owns the channels (and closes them)."""
    channels: dict[str, grpc.aio.Channel]
    """Upstream name (a mesh service, or HOST:PORT) -> its channel."""
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
            channel = self.channels[upstream]
            if rpc.server_streaming or rpc.client_streaming:
                self._stream[rpc.path] = _stream(channel, rpc)
            else:
                self._unary[rpc.path] = _unary(channel, rpc)

    def unary(self, rpc: Rpc) -> Unary | None:
        """The prepared unary call of an RPC, or None when no upstream serves it."""
        return self._unary.get(rpc.path)

    def stream(self, rpc: Rpc) -> OpenStream | None:
        """The prepared call of a streaming RPC (any kind), or None when no upstream serves it."""
        return self._stream.get(rpc.path)

    async def health(self, wait: float = 1.0) -> dict[str, str]:
        """SERVING / NOT_SERVING / DOWN of every upstream, checked at once."""
        names = list(self.channels)
        results = await asyncio.gather(*(_health(self.channels[n], wait) for n in names))
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        self.channels = {}
        await self.clients.close()


def in_mesh(config: MeshConfig, api: Api, telemetry: Telemetry | None = None) -> Upstreams:
    """Each service goes to the mesh service of its package."""
    clients = Clients(config, caller="gateway", telemetry=telemetry)
    upstreams = Upstreams(clients, channels={}, routes={})
    for service in api.services:
        try:
            target = clients.target_service(service)
        except ConfigError:
            upstreams.problems.append(
                f"{service.full_name}: no service in the mesh serves {service.file.package}"
            )
            continue
        siblings = [s for s in api.services if s.file.package == service.file.package]
        upstreams.channels[target.name] = clients.channel(target, siblings)
        upstreams.routes[service.full_name] = target.name
    return upstreams


def direct(
    config: MeshConfig,
    api: Api,
    addresses: list[str],
    served: Mapping[str, Iterable[str]] | None,
    tls: UpstreamTls | None = None,
    telemetry: Telemetry | None = None,
) -> Upstreams:
    """Channels to `addresses` (over TLS with `tls`); `served` says which services each lists
    (None: all go to the only one)."""
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("--upstream", "--upstream", f"expected HOST:PORT, got {address!r}")
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
    clients = Clients(config, caller="gateway", telemetry=telemetry)
    channels = {}
    for address in addresses:
        carried = [s for s in api.services if routes.get(s.full_name) == address]
        if tls is None:
            channels[address] = clients.channel_to(address, carried)
        else:
            channels[address] = clients.channel_to(address, carried, tls.credentials(), tls.channel_options())
    return Upstreams(clients, channels, routes, problems)
