"""Fault injection, and what the mesh's retries make of it: healed when safe, never repeated when not."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from rideshare.passengers.v1 import passengers_pb2 as pb
from rideshare.passengers.v1 import passengers_pb2_grpc

from services.runtime.client import Clients
from services.runtime.config import FaultConfig, MeshConfig, RetryBudgetConfig, ServiceConfig, load_config
from services.runtime.errors import ConfigError
from services.runtime.faults import Fault, faults_for
from services.runtime.server import Service

from ..conftest import MESH_TOML, with_port, write_mesh_file

PASSENGERS = pb.DESCRIPTOR.services_by_name["PassengerService"]
GET = "/rideshare.passengers.v1.PassengerService/GetPassenger"
SOME_NAME = "passengers/" + "c" * 32


def strikes(percent: float, calls: int) -> str:
    fault = Fault("test", FaultConfig(abort="UNAVAILABLE", percent=percent))
    return "".join("x" if fault.strikes() else "." for _ in range(calls))


def test_the_share_of_faulty_calls_is_exact_and_spread_evenly():
    assert strikes(100, 4) == "xxxx"
    assert strikes(50, 6) == ".x.x.x"
    assert strikes(25, 8) == "...x...x"
    assert strikes(75, 4) == ".xxx"
    assert strikes(33.3, 1000).count("x") == 333


def with_faults(config: MeshConfig, service: str, faults: dict[str, FaultConfig]) -> MeshConfig:
    services = dict(config.services)
    services[service] = dataclasses.replace(services[service], faults=faults)
    return dataclasses.replace(config, services=services)


def test_faults_name_methods_the_service_serves(mesh_config):
    service = with_faults(mesh_config, "passengers", {"GetPasenger": FaultConfig(abort="INTERNAL")})

    with pytest.raises(ConfigError) as caught:
        faults_for(service.service("passengers"), [PASSENGERS])

    assert caught.value.key == "services.passengers.faults.GetPasenger"
    assert "did you mean 'GetPassenger'" in caught.value.problem


def test_a_star_fault_covers_every_method_a_named_one_overrides_it(mesh_config):
    config = with_faults(
        mesh_config,
        "passengers",
        {"*": FaultConfig(delay=0.1), "GetPassenger": FaultConfig(abort="NOT_FOUND")},
    )

    found = faults_for(config.service("passengers"), [PASSENGERS])

    assert set(found) == {f"/{PASSENGERS.full_name}/{m.name}" for m in PASSENGERS.methods}
    assert found[GET].code is grpc.StatusCode.NOT_FOUND
    assert found[f"/{PASSENGERS.full_name}/ListPassengers"].config.delay == 0.1


def test_faults_come_from_mesh_toml_or_one_environment_variable(tmp_path):
    text = MESH_TOML + '[services.passengers.faults.GetPassenger]\nabort = "unavailable"\npercent = 50\n'
    from_file = load_config(write_mesh_file(tmp_path, text), env={})
    from_env = load_config(
        write_mesh_file(tmp_path),
        env={
            "MESH_SERVICES__PASSENGERS__FAULTS": "GetPassenger: abort=UNAVAILABLE, percent=50%; *: delay=20ms"
        },
    )

    assert from_file.service("passengers").faults == {
        "GetPassenger": FaultConfig(abort="UNAVAILABLE", percent=50)
    }
    assert from_env.service("passengers").faults == {
        "GetPassenger": FaultConfig(abort="UNAVAILABLE", percent=50),
        "*": FaultConfig(delay=0.02),
    }


@pytest.mark.parametrize(
    ("text", "env", "key", "problem"),
    [
        ('[services.passengers.faults.GetPassenger]\nabort = "UNAVALABLE"\n', {}, "abort", "did you mean"),
        (
            "[services.passengers.faults.GetPassenger]\npercent = 150\nabort = 'INTERNAL'\n",
            {},
            "percent",
            "100",
        ),
        ("[services.passengers.faults.GetPassenger]\npercent = 50\n", {}, "GetPassenger", "delay, an abort"),
        ('[services.passengers.faults.getPassenger]\ndelay = "1s"\n', {}, "getPassenger", "method name"),
        ('[services.passengers.faults.GetPassenger]\nabort = "OK"\n', {}, "abort", "status code"),
        ("", {"MESH_SERVICES__PASSENGERS__FAULTS": "GetPassenger abort"}, "faults", "QuoteFare: abort="),
        ("", {"MESH_SERVICES__PASSENGERS__FAULTS": "GetPassenger: delay=soon"}, "delay", "duration"),
    ],
)
def test_a_bad_fault_is_refused_naming_its_key(tmp_path, text, env, key, problem):
    with pytest.raises(ConfigError) as caught:
        load_config(write_mesh_file(tmp_path, MESH_TOML + text), env=env)

    assert caught.value.key.endswith(key)
    assert problem in caught.value.problem


class Counting(passengers_pb2_grpc.PassengerServiceServicer):
    """A passenger service that counts the calls that reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def GetPassenger(self, request, context):
        self.calls += 1
        return pb.Passenger(name=request.name)


def counting(runtime) -> list[Service]:
    counting.servicer = Counting()
    return [
        Service(PASSENGERS, counting.servicer, passengers_pb2_grpc.add_PassengerServiceServicer_to_server)
    ]


def faulty_passengers(serve, mesh_config, fault: FaultConfig, budget: RetryBudgetConfig | None = None):
    config = with_faults(mesh_config, "passengers", {"GetPassenger": fault})
    if budget is not None:
        config = dataclasses.replace(config, client=dataclasses.replace(config.client, retry_budget=budget))
    server = serve(config=config, make=counting)
    return server, Clients(with_port(config, "passengers", server.port), caller="test")


def test_retries_heal_injected_unavailable_on_a_safe_method(serve, mesh_config):
    server, clients = faulty_passengers(serve, mesh_config, FaultConfig(abort="UNAVAILABLE", percent=50))
    try:
        stub = clients.stub(passengers_pb2_grpc.PassengerServiceStub)
        for _ in range(10):
            assert server.call(stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME))).name == SOME_NAME
    finally:
        server.call(clients.close())

    fault = server.server.faults[GET]
    # Attempts alternate ok, failed: the first call passes at once, every later one fails once, then passes.
    assert counting.servicer.calls == 10
    assert fault.struck == 9
    assert fault.calls == 19


def test_the_retry_budget_stops_retries_when_everything_fails(serve, mesh_config):
    server, clients = faulty_passengers(
        serve, mesh_config, FaultConfig(abort="UNAVAILABLE"), RetryBudgetConfig(max_tokens=4, token_ratio=0.1)
    )
    try:
        stub = clients.stub(passengers_pb2_grpc.PassengerServiceStub)
        for _ in range(10):
            assert server.fail(stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME))).code is (
                grpc.StatusCode.UNAVAILABLE
            )
    finally:
        server.call(clients.close())

    # Without a budget each call would take 4 attempts; with 4 tokens only the first call is retried.
    assert server.server.faults[GET].calls == 11


# A contract with a write that is not safe to repeat: no request_id, no GET binding, no idempotency_level.
_TALLY = descriptor_pb2.FileDescriptorProto(
    name="tests/tally.proto", package="rideshare.tally.v1", syntax="proto3"
)
_TALLY.message_type.add(name="AddRequest").field.add(
    name="amount", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64
)
_TALLY.message_type.add(name="Tally").field.add(
    name="total", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64
)
_TALLY.service.add(name="TallyService").method.add(
    name="Add", input_type=".rideshare.tally.v1.AddRequest", output_type=".rideshare.tally.v1.Tally"
)
_POOL = descriptor_pool.DescriptorPool()
TALLY = _POOL.AddSerializedFile(_TALLY.SerializeToString()).services_by_name["TallyService"]
AddRequest = message_factory.GetMessageClass(TALLY.methods_by_name["Add"].input_type)
Tally = message_factory.GetMessageClass(TALLY.methods_by_name["Add"].output_type)


class TallyServicer:
    def __init__(self) -> None:
        self.total = 0

    async def Add(self, request, context):
        self.total += request.amount
        return Tally(total=self.total)


def register_tally(servicer: TallyServicer, server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.Add, request_deserializer=AddRequest.FromString, response_serializer=Tally.SerializeToString
    )
    server.add_registered_method_handlers(TALLY.full_name, {"Add": handler})


def test_an_unsafe_write_is_never_repeated(serve, mesh_config):
    tally = ServiceConfig(
        "tally",
        "127.0.0.1",
        0,
        "tests.tally",
        "rideshare.tally.v1",
        {},
        faults={"Add": FaultConfig(abort="UNAVAILABLE")},
    )
    config = dataclasses.replace(mesh_config, services={**mesh_config.services, "tally": tally})
    servicer = TallyServicer()
    server = serve("tally", config=config, make=lambda runtime: [Service(TALLY, servicer, register_tally)])
    clients = Clients(with_port(config, "tally", server.port), caller="test")
    try:
        channel = clients.channel(clients.target_service(TALLY), [TALLY])
        add = channel.unary_unary(
            f"/{TALLY.full_name}/Add",
            request_serializer=AddRequest.SerializeToString,
            response_deserializer=Tally.FromString,
        )
        failure = server.fail(add(AddRequest(amount=5)))
    finally:
        server.call(clients.close())

    assert failure.code is grpc.StatusCode.UNAVAILABLE
    assert failure.message == "fault injected by services.tally.faults.Add"
    assert server.server.faults[f"/{TALLY.full_name}/Add"].calls == 1
