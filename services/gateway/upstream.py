"""The gRPC side: a callable per RPC, on channels to wherever each service runs.

Inside the mesh the channels are the mesh client's (`services.mesh.client.Clients`:
round robin, retries on UNAVAILABLE for safe methods, the mesh's default
deadline); in front of other servers (`--upstream HOST:PORT`) they are plain
channels to those addresses. The callables are made once per RPC at start-up,
so a request only looks one up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor as d
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from services.mesh.client import Clients, is_safe_to_retry
from services.mesh.config import MeshConfig
from services.mesh.errors import ConfigError
from services.mesh.telemetry import Telemetry

from .api import Api
from .routes import Rpc

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


@dataclass
class Upstreams:
    """Channels by upstream name, and which upstream serves each service."""

    channels: dict[str, grpc.aio.Channel]
    """Upstream name (a mesh service, or HOST:PORT) -> channel."""
    routes: dict[str, str]
    """Service full name -> upstream name."""
    problems: list[str] = field(default_factory=list)
    """Services of the API that no upstream serves (their routes answer 503)."""
    _unary: dict[str, Any] = field(default_factory=dict)
    _stream: dict[str, Any] = field(default_factory=dict)

    def prepare(self, rpcs: Iterable[Rpc]) -> None:
        """Make the callable of every RPC whose service has an upstream."""
        for rpc in rpcs:
            upstream = self.routes.get(rpc.service.full_name)
            if upstream is None:
                continue
            channel = self.channels[upstream]
            make = channel.unary_stream if rpc.server_streaming else channel.unary_unary
            callable_ = make(
                rpc.path, request_serializer=_serialize, response_deserializer=rpc.response_class.FromString
            )
            (self._stream if rpc.server_streaming else self._unary)[rpc.path] = callable_

    def unary(self, rpc: Rpc) -> Any:
        """The `UnaryUnaryMultiCallable` of an RPC, or None when no upstream serves it."""
        return self._unary.get(rpc.path)

    def stream(self, rpc: Rpc) -> Any:
        return self._stream.get(rpc.path)

    async def health(self, wait: float = 1.0) -> dict[str, str]:
        """SERVING / NOT_SERVING / DOWN of every upstream, checked at once."""
        names = list(self.channels)
        results = await asyncio.gather(*(self._check(self.channels[n], wait) for n in names))
        return dict(zip(names, results, strict=True))

    @staticmethod
    async def _check(channel: grpc.aio.Channel, wait: float) -> str:
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

    async def close(self) -> None:
        channels, self.channels = list(self.channels.values()), {}
        for channel in channels:
            await channel.close()


def in_mesh(config: MeshConfig, api: Api, telemetry: Telemetry | None = None) -> tuple[Upstreams, Clients]:
    """Upstreams on the mesh client's channels: each service goes to the mesh service of its package."""
    clients = Clients(config, caller="gateway", telemetry=telemetry)
    upstreams = Upstreams(channels={}, routes={})
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
    return upstreams, clients


def direct(
    config: MeshConfig, api: Api, addresses: list[str], served: Mapping[str, Iterable[str]] | None
) -> Upstreams:
    """Plain channels to `addresses`; `served` says which services each lists (None: all go to the only one).

    Each channel retries UNAVAILABLE on the methods that are safe to repeat, with the mesh's
    retry settings; there is no health-checking config, since other servers may not report a
    status per service.
    """
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
    channels: dict[str, grpc.aio.Channel] = {}
    for address in addresses:
        services = [s for s in api.services if routes.get(s.full_name) == address]
        options = [
            ("grpc.service_config", json.dumps(_plain_service_config(config, services))),
            ("grpc.enable_retries", 1),
            ("grpc.primary_user_agent", "rideshare-gateway"),
        ]
        channels[address] = grpc.aio.insecure_channel(address, options=options)
    return Upstreams(channels=channels, routes=routes, problems=problems)


def _plain_service_config(config: MeshConfig, services: list[d.ServiceDescriptor]) -> dict[str, Any]:
    retry = config.client.retry
    safe = [
        {"service": s.full_name, "method": m.name} for s in services for m in s.methods if is_safe_to_retry(m)
    ]
    methods: list[dict[str, Any]] = []
    if safe and retry.max_attempts > 1:
        methods.append(
            {
                "name": safe,
                "retryPolicy": {
                    "maxAttempts": retry.max_attempts,
                    "initialBackoff": f"{retry.initial_backoff:.3f}s",
                    "maxBackoff": f"{retry.max_backoff:.3f}s",
                    "backoffMultiplier": retry.backoff_multiplier,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        )
    return {"methodConfig": methods, "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}
