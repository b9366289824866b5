"""Draining: a stopping server reports NOT_SERVING and waits while clients still route by its health."""

from __future__ import annotations

import asyncio
import dataclasses

from grpc_health.v1 import health_pb2, health_pb2_grpc
from rideshare.passengers.v1 import passengers_pb2 as pb
from rideshare.passengers.v1 import passengers_pb2_grpc

from services.runtime.client import Clients
from services.runtime.drain import WatchedHealth, drain

from ..conftest import with_port

SERVICE = "rideshare.passengers.v1.PassengerService"


def test_nobody_watching_means_no_wait(loop):
    assert loop.call(drain(WatchedHealth(), 30.0)) == 0.0


def test_a_watched_server_drains_not_serving_until_its_clients_leave(serve, mesh_config):
    config = dataclasses.replace(mesh_config, drain_period=30.0)
    server = serve(config=config)
    clients = Clients(with_port(config, "passengers", server.port), caller="test")
    stub = clients.stub(passengers_pb2_grpc.PassengerServiceStub)
    health = health_pb2_grpc.HealthStub(server.channel)

    async def status() -> int:
        answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        return answer.status

    async def scenario() -> None:
        await stub.ListPassengers(pb.ListPassengersRequest())  # connects, and starts watching health
        assert server.server.health.watchers == 1
        stopping = asyncio.create_task(server.server.stop(0))
        for _ in range(100):
            if await status() == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.05)
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not stopping.done(), "stopped without draining"

        await clients.close()  # the last watcher leaves: the drain ends long before its 30 s
        await asyncio.wait_for(stopping, 10)
        await server.channel.close()

    server.call(scenario())
    server.stopped = True
