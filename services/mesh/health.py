"""Asking a member of the mesh how it is: the gRPC health service, or the gateway's `GET /healthz`.

`probe` asks once (`mesh status`); `until_serving` (`mesh up`) watches the
health service's `Watch` stream until SERVING, then closes it at once (a
stopping server drains while anyone still watches, runtime/drain.py). With
TLS on, both ask as the `mesh` identity and check the member proves its name.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime import identity
from services.runtime.config import MeshConfig

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
DOWN = "DOWN"
GATEWAY = "gateway"
"""The member name of the REST bridge."""
PROBE_TIMEOUT = 1.0
"""How long one question may take; a member that answers later counts as DOWN."""
_QUICK_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 250)]
"""A member still starting refuses connections; try again soon, not after grpc's default 1 s and up."""


async def probe(config: MeshConfig, name: str, address: str) -> str:
    """SERVING, NOT_SERVING, or DOWN when nothing answers at `address`."""
    if name == GATEWAY:
        return await asyncio.to_thread(_gateway_health, address)
    async with identity.aio_channel(config, "mesh", name, address) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            return NOT_SERVING if exc.code() == grpc.StatusCode.NOT_FOUND else DOWN
    status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return status


async def until_serving(config: MeshConfig, name: str, address: str) -> None:
    """Return once the member at `address` says SERVING (however long that takes: callers bound it)."""
    while name == GATEWAY:  # HTTP has no watch: ask again until it answers 200
        if await probe(config, name, address) == SERVING:
            return
        await asyncio.sleep(0.1)
    async with identity.aio_channel(config, "mesh", name, address, _QUICK_RECONNECT) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                async for answer in stub.Watch(health_pb2.HealthCheckRequest(), wait_for_ready=True):
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.aio.AioRpcError:
                pass  # the stream broke (the process went away, or a restart): watch again
            await asyncio.sleep(0.1)


def _gateway_health(address: str) -> str:
    """The gateway's `GET /healthz` (which also checks its upstreams) as a health status."""
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=PROBE_TIMEOUT) as response:
            return SERVING if response.status == 200 else NOT_SERVING
    except urllib.error.HTTPError:
        return NOT_SERVING
    except (OSError, ValueError):
        return DOWN
