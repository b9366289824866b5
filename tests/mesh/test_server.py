"""The server every service runs: health, reflection, durable data, a port of its own."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rideshare.passengers.v1 import passengers_pb2 as pb

from services.passengers import app as passengers_app
from services.runtime.server import PortInUse, Service, create_server

SERVICE = "rideshare.passengers.v1.PassengerService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(running, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(running.channel)
    return running.call(stub.Check(health_pb2.HealthCheckRequest(service=service))).status


def test_health_reports_serving_per_service_and_overall(passengers):
    assert check(passengers, SERVICE) == SERVING
    assert check(passengers, "") == SERVING


def test_health_of_an_unknown_service_is_not_found(passengers):
    stub = health_pb2_grpc.HealthStub(passengers.channel)

    failure = passengers.fail(stub.Check(health_pb2.HealthCheckRequest(service="rideshare.nope.v1.Nope")))

    assert failure.code is grpc.StatusCode.NOT_FOUND


def test_health_watchers_see_not_serving_as_soon_as_stop_begins(passengers):
    async def watch_through_stop() -> list[int]:
        stub = health_pb2_grpc.HealthStub(passengers.channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        seen = [(await watch.read()).status]
        stopping = asyncio.ensure_future(passengers.server.stop(grace=5))
        seen.append((await watch.read()).status)
        watch.cancel()
        await stopping
        return seen

    assert passengers.call(watch_through_stop()) == [SERVING, NOT_SERVING]
    passengers.stop()


def test_reflection_lists_the_service_health_and_reflection(passengers):
    async def list_services() -> list[str]:
        stub = reflection_pb2_grpc.ServerReflectionStub(passengers.channel)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        await call.done_writing()
        return [s.name for s in response.list_services_response.service]

    names = passengers.call(list_services())

    assert SERVICE in names
    assert "grpc.health.v1.Health" in names
    assert "grpc.reflection.v1alpha.ServerReflection" in names


def test_reflection_describes_the_contract(passengers):
    async def file_of(symbol: str) -> list[bytes]:
        stub = reflection_pb2_grpc.ServerReflectionStub(passengers.channel)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        response = await call.read()
        await call.done_writing()
        return list(response.file_descriptor_response.file_descriptor_proto)

    files = [descriptor_pb2.FileDescriptorProto.FromString(f) for f in passengers.call(file_of(SERVICE))]

    [contract] = [f for f in files if f.name == pb.DESCRIPTOR.name]
    assert [s.name for s in contract.service] == ["PassengerService"]
    assert [m.name for m in contract.service[0].method] == [
        "CreatePassenger",
        "SignIn",
        "RefreshSession",
        "SignOut",
        "ChangePassword",
        "GetPassenger",
        "ListPassengers",
        "UpdatePassenger",
        "DeletePassenger",
    ]


def test_data_survives_a_restart_on_the_same_data_dir(serve, mesh_config):
    first = serve()
    created = first.call(
        first.stub.CreatePassenger(
            pb.CreatePassengerRequest(
                passenger=pb.Passenger(display_name="Ada", email="ada@example.com"), request_id="r-1"
            )
        )
    )
    first.stop(grace=1)

    second = serve()

    assert second.port != 0
    assert second.call(second.stub.GetPassenger(pb.GetPassengerRequest(name=created.name))) == created
    replayed = second.call(
        second.stub.CreatePassenger(
            pb.CreatePassengerRequest(
                passenger=pb.Passenger(display_name="Ada", email="ada@example.com"), request_id="r-1"
            )
        )
    )
    assert replayed == created
    assert (mesh_config.data_dir / "passengers" / "passengers.db").exists()


def test_start_on_a_taken_port_raises_port_in_use(passengers, mesh_config):
    second = passengers.call(create_server(mesh_config, "passengers", port=passengers.port))

    try:
        with pytest.raises(PortInUse, match=str(passengers.port)):
            passengers.call(second.start())
    finally:
        passengers.call(second.stop(0))

    assert check(passengers, SERVICE) == SERVING


class Gate:
    """Holds ListPassengers calls until released, to have a call in flight on purpose."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def services(self, runtime) -> list[Service]:
        service = passengers_app.create(runtime)
        plain = service.servicer.ListPassengers

        async def held(request, context):
            self.entered.set()
            await self.release.wait()
            return await plain(request, context)

        service.servicer.ListPassengers = held
        return [service]


def test_stop_lets_in_flight_calls_finish_and_refuses_new_ones(serve):
    gate = Gate()
    running = serve(make=gate.services)

    async def stop_during_a_call():
        in_flight = running.stub.ListPassengers(pb.ListPassengersRequest())
        await gate.entered.wait()
        stopping = asyncio.ensure_future(running.server.stop(grace=30))
        await asyncio.sleep(0)
        gate.release.set()
        response = await in_flight
        await stopping
        return response

    assert running.call(stop_during_a_call()) == pb.ListPassengersResponse()
    failure = running.fail(running.stub.ListPassengers(pb.ListPassengersRequest()))
    assert failure.code is grpc.StatusCode.UNAVAILABLE
