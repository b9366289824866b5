"""Readiness follows the database: NOT_SERVING while a service cannot reach it, SERVING when it can again."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rideshare.passengers.v1 import passengers_pb2 as pb

from services.runtime.config import load_config
from tests import postgres
from tests.conftest import MESH_TOML, failure_of, write_mesh_file
from tests.ports import free_port

SERVICE = "rideshare.passengers.v1.PassengerService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PATIENCE = 30.0
"""A bound on waiting for something that must happen, not a speed check."""


def postgres_config(tmp_path, dsn: str, interval: str = "100ms"):
    text = MESH_TOML + (
        f'\n[storage]\nbackend = "postgres"\ndsn = "{dsn}"\npool_max = 3\n'
        f'connect_timeout = "1s"\nhealth_interval = "{interval}"\n'
    )
    return load_config(write_mesh_file(tmp_path, text), env={})


async def until_created(stub, request: pb.CreatePassengerRequest) -> pb.Passenger:
    """What a client does with UNAVAILABLE: the same request (same request_id) again."""
    while True:
        try:
            return await stub.CreatePassenger(request)
        except grpc.aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.UNAVAILABLE:
                raise


def test_a_service_is_not_serving_while_its_database_server_is_gone_and_serving_once_it_is_back(
    tmp_path, serve, loop, postgres_databases
):
    # The server "restarts": a proxy in front of it closes (connections cut, the port refusing),
    # then listens again on the same port.
    proxy = postgres.Proxy(free_port())
    loop.call(proxy.start())
    dsn = proxy.dsn(postgres_databases.create("restart"))
    running = serve(config=postgres_config(tmp_path, dsn))
    ada = running.call(running.stub.CreatePassenger(pb.CreatePassengerRequest(passenger=ADA)))

    async def scenario() -> dict[str, object]:
        health = health_pb2_grpc.HealthStub(running.channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(service=name)) for name in (SERVICE, "")]
        seen: dict[str, object] = {"before": [(await w.read()).status for w in watches]}
        await proxy.stop()
        seen["gone"] = [(await w.read()).status for w in watches]
        try:
            await running.stub.GetPassenger(pb.GetPassengerRequest(name=ada.name))
        except grpc.aio.AioRpcError as error:
            seen["call"] = failure_of(error)
        await proxy.start()
        seen["back"] = [(await w.read()).status for w in watches]
        request = pb.CreatePassengerRequest(passenger=BOB, request_id="bob-1")
        seen["created"] = await until_created(running.stub, request)
        seen["replayed"] = await running.stub.CreatePassenger(request)
        for watch in watches:
            watch.cancel()
        return seen

    async def bounded() -> dict[str, object]:
        async with asyncio.timeout(PATIENCE):
            return await scenario()

    try:
        seen = loop.call(bounded())
    finally:
        loop.call(proxy.stop())
        running.stop()

    assert seen["before"] == [SERVING, SERVING]
    assert seen["gone"] == [NOT_SERVING, NOT_SERVING]
    call = seen["call"]
    assert call.code is grpc.StatusCode.UNAVAILABLE
    assert call.info.reason == "DATABASE_UNAVAILABLE"
    assert call.info.metadata["database"] == f"127.0.0.1:{proxy.port}/{postgres_databases.prefix}_restart"
    assert "Traceback" not in call.message
    assert seen["back"] == [SERVING, SERVING]
    assert seen["created"] == seen["replayed"]  # written once, whatever the first attempts met


def test_a_call_that_meets_the_database_gone_turns_the_service_not_serving_before_the_next_look(
    tmp_path, serve, loop, postgres_databases
):
    proxy = postgres.Proxy(free_port())
    loop.call(proxy.start())
    dsn = proxy.dsn(postgres_databases.create("call"))
    running = serve(config=postgres_config(tmp_path, dsn, interval="1h"))  # no periodic look in this test

    async def scenario() -> tuple[grpc.StatusCode, int]:
        health = health_pb2_grpc.HealthStub(running.channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert (await watch.read()).status == SERVING
        await proxy.stop()
        try:
            await running.stub.GetPassenger(pb.GetPassengerRequest(name="passengers/nobody"))
        except grpc.aio.AioRpcError as error:
            code = error.code()
        status = (await watch.read()).status
        watch.cancel()
        return code, status

    async def bounded() -> tuple[grpc.StatusCode, int]:
        async with asyncio.timeout(PATIENCE):
            return await scenario()

    try:
        assert loop.call(bounded()) == (grpc.StatusCode.UNAVAILABLE, NOT_SERVING)
    finally:
        loop.call(proxy.stop())
        running.stop()


def test_a_service_on_sqlite_follows_no_database(passengers):
    assert passengers.server.readiness.backends == []


ADA = pb.Passenger(display_name="Ada", email="ada@example.com")
BOB = pb.Passenger(display_name="Bob", email="bob@example.com")
