"""Calls between services: stubs by name, timeouts, retries, deadline and header propagation."""

from __future__ import annotations

import dataclasses
import time

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2
from rideshare.passengers.v1 import passengers_pb2 as pb
from rideshare.passengers.v1 import passengers_pb2_grpc

from services.runtime.client import (
    Clients,
    _Propagate,
    is_safe_to_retry,
    service_config,
    service_descriptor_of,
)
from services.runtime.config import ClientConfig, RetryConfig
from services.runtime.context import CallContext, current_call
from services.runtime.errors import ConfigError, Unavailable
from services.runtime.server import Service
from services.runtime.telemetry import Outgoing, Telemetry

from ..conftest import with_port

PASSENGERS = pb.DESCRIPTOR.services_by_name["PassengerService"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
SOME_NAME = "passengers/" + "b" * 32


def test_stub_class_leads_to_its_contract():
    assert service_descriptor_of(passengers_pb2_grpc.PassengerServiceStub) is PASSENGERS

    with pytest.raises(TypeError):
        service_descriptor_of(Clients)


def test_reads_and_writes_with_a_request_id_are_safe_to_retry():
    assert is_safe_to_retry(PASSENGERS.methods_by_name["GetPassenger"])
    assert is_safe_to_retry(PASSENGERS.methods_by_name["ListPassengers"])
    assert is_safe_to_retry(PASSENGERS.methods_by_name["CreatePassenger"])
    assert is_safe_to_retry(PASSENGERS.methods_by_name["DeletePassenger"])
    # neither annotated GET nor carrying a request_id
    assert not is_safe_to_retry(HEALTH.methods_by_name["Check"])


def test_service_config_retries_only_safe_methods(mesh_config):
    config = service_config(mesh_config, [PASSENGERS, HEALTH])

    # round_robin over the replicas, inside outlier detection (traffic.py)
    [balancing] = config["loadBalancingConfig"]
    assert balancing["outlier_detection_experimental"]["childPolicy"] == [{"round_robin": {}}]
    [safe] = config["methodConfig"]
    retried = {(n["service"], n["method"]) for n in safe["name"]}
    # every method but the sign-in ones: a refresh token works once, so a retried refresh would fail,
    # and a retried password change would find the password changed. SignOut is IDEMPOTENT.
    signing_in = {"SignIn", "RefreshSession", "ChangePassword"}
    assert retried == {(PASSENGERS.full_name, m.name) for m in PASSENGERS.methods if m.name not in signing_in}
    assert (HEALTH.full_name, "Check") not in retried
    # grpcio applies a service-config timeout 1-2 s early (grpc/grpc#34547): the interceptor sets it
    assert "timeout" not in safe
    assert safe["retryPolicy"] == {
        "maxAttempts": 4,
        "initialBackoff": "0.050s",
        "maxBackoff": "0.500s",
        "backoffMultiplier": 2.0,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    assert config["retryThrottling"] == {"maxTokens": 100, "tokenRatio": 0.1}


def test_one_attempt_means_no_retry_policy(mesh_config):
    config = dataclasses.replace(
        mesh_config, client=ClientConfig(timeout=1.5, retry=RetryConfig(max_attempts=1))
    )

    assert service_config(config, [PASSENGERS])["methodConfig"] == []


def test_stub_reaches_the_running_service_by_name(passengers, mesh_config):
    clients = Clients(with_port(mesh_config, "passengers", passengers.port), caller="test")
    try:
        stub = clients.stub(passengers_pb2_grpc.PassengerServiceStub)
        created = passengers.call(
            stub.CreatePassenger(
                pb.CreatePassengerRequest(passenger=pb.Passenger(display_name="Ada", email="ada@example.com"))
            )
        )
        again = clients.stub(passengers_pb2_grpc.PassengerServiceStub)
        assert passengers.call(again.GetPassenger(pb.GetPassengerRequest(name=created.name))) == created
        assert len(clients._channels) == 1
    finally:
        passengers.call(clients.close())


def test_a_stub_asked_for_after_close_is_on_a_fresh_channel(passengers, mesh_config):
    # Stubs are kept with their channel; one kept past close() would fail every call.
    clients = Clients(with_port(mesh_config, "passengers", passengers.port), caller="test")
    try:
        first = clients.stub(passengers_pb2_grpc.PassengerServiceStub)
        passengers.call(clients.close())
        stub = clients.stub(passengers_pb2_grpc.PassengerServiceStub)
        assert stub is not first
        created = passengers.call(
            stub.CreatePassenger(
                pb.CreatePassengerRequest(passenger=pb.Passenger(display_name="Bo", email="bo@example.com"))
            )
        )
        assert created.display_name == "Bo"
    finally:
        passengers.call(clients.close())


def test_a_contract_no_service_serves_is_a_config_error(mesh_config):
    clients = Clients(mesh_config, caller="test")

    with pytest.raises(ConfigError) as caught:
        clients.target_service(HEALTH)

    assert "grpc.health.v1" in caught.value.problem


def at_most(remaining: float | None, seconds: float) -> bool:
    """The server saw a deadline no later than `seconds` (grpc rounds the grpc-timeout header up a little)."""
    return remaining is not None and remaining <= seconds * 1.01


class Recorder(passengers_pb2_grpc.PassengerServiceServicer):
    """A passenger service that remembers how it was called; fails the first `failures` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[float | None, dict[str, str]]] = []

    async def GetPassenger(self, request, context):
        self.calls.append((context.time_remaining(), dict(context.invocation_metadata())))
        if len(self.calls) <= self.failures:
            raise Unavailable("warming up")
        return pb.Passenger(name=request.name)

    async def DeletePassenger(self, request, context):
        self.calls.append((context.time_remaining(), {"request_id": request.request_id}))
        if len(self.calls) <= self.failures:
            raise Unavailable("warming up")
        return empty_pb2.Empty()


class Forwarder(passengers_pb2_grpc.PassengerServiceServicer):
    """Answers GetPassenger by asking the mesh's passenger service, the way services call each other."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime

    async def GetPassenger(self, request, context):
        return await self.runtime.clients.stub(passengers_pb2_grpc.PassengerServiceStub).GetPassenger(request)


def serving(servicer_class, *args):
    def make(runtime) -> list[Service]:
        servicer = servicer_class(runtime) if servicer_class is Forwarder else servicer_class(*args)
        make.servicer = servicer
        return [Service(PASSENGERS, servicer, passengers_pb2_grpc.add_PassengerServiceServicer_to_server)]

    return make


@pytest.fixture
def chain(serve, mesh_config):
    """caller -> front (a Forwarder, own client timeout 20 s) -> back (a Recorder)."""

    def build(own_timeout: float = 20.0, failures: int = 0):
        recording = serving(Recorder, failures)
        back = serve(make=recording)
        config = with_port(mesh_config, "passengers", back.port)
        config = dataclasses.replace(config, client=dataclasses.replace(config.client, timeout=own_timeout))
        front = serve(config=config, make=serving(Forwarder))
        return front, recording.servicer

    return build


def test_calls_outside_a_served_call_carry_the_mesh_timeout(serve, mesh_config, loop):
    recording = serving(Recorder)
    back = serve(make=recording)
    config = with_port(mesh_config, "passengers", back.port)
    clients = Clients(dataclasses.replace(config, client=ClientConfig(timeout=4.0)), caller="test")
    try:
        stub = clients.stub(passengers_pb2_grpc.PassengerServiceStub)
        loop.call(stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME)))
    finally:
        loop.call(clients.close())

    [(remaining, _)] = recording.servicer.calls
    assert at_most(remaining, 4)


def test_the_callers_deadline_follows_the_call_downstream(chain):
    front, recorder = chain(own_timeout=20.0)

    front.call(front.stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME), timeout=3))

    [(remaining, _)] = recorder.calls
    assert at_most(remaining, 3)


def test_the_own_timeout_applies_when_it_is_shorter(chain):
    front, recorder = chain(own_timeout=2.0)

    front.call(front.stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME), timeout=60))

    [(remaining, _)] = recorder.calls
    assert at_most(remaining, 2)


def test_trace_headers_follow_the_call_downstream_and_others_do_not(chain):
    front, recorder = chain()
    sent = [
        ("x-request-id", "req-9"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", "vendor=1"),
        ("authorization", "Bearer secret"),
    ]

    front.call(front.stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME), metadata=sent))

    [(_, metadata)] = recorder.calls
    assert metadata["x-request-id"] == "req-9"
    # The same trace, continued by the caller's own client span (telemetry.py): a new parent id.
    version, trace_id, parent_id, flags = metadata["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert parent_id != "00f067aa0ba902b7"
    assert metadata["tracestate"] == "vendor=1"
    assert "authorization" not in metadata
    assert metadata["user-agent"].startswith("rideshare-passengers")


def test_unavailable_is_retried_on_safe_methods(chain):
    front, recorder = chain(failures=2)

    answer = front.call(front.stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME)))

    assert answer.name == SOME_NAME
    assert len(recorder.calls) == 3


def test_retries_stop_after_max_attempts(chain):
    front, recorder = chain(failures=10)

    failure = front.fail(front.stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME)))

    assert failure.code is grpc.StatusCode.UNAVAILABLE
    assert len(recorder.calls) == 4


def test_a_write_sent_without_request_id_gets_one_that_every_retry_repeats(serve, mesh_config, loop):
    recording = serving(Recorder, 2)
    back = serve(make=recording)
    clients = Clients(with_port(mesh_config, "passengers", back.port), caller="test")
    try:
        stub = clients.stub(passengers_pb2_grpc.PassengerServiceStub)
        loop.call(stub.DeletePassenger(pb.DeletePassengerRequest(name=SOME_NAME)))
    finally:
        loop.call(clients.close())

    keys = [seen["request_id"] for _, seen in recording.servicer.calls]
    assert len(keys) == 3
    assert keys[0] != ""
    assert set(keys) == {keys[0]}


def details(timeout=None, metadata=()):
    return grpc.aio.ClientCallDetails("/p.S/M", timeout, grpc.aio.Metadata(*metadata), None, None)


def propagate(call: CallContext | None, outgoing, own: float | None = 20.0, trace=None):
    token = current_call.set(call)
    try:
        return _Propagate(20.0)._details(outgoing, own, trace)
    finally:
        current_call.reset(token)


def test_outside_a_served_call_the_mesh_timeout_is_the_default():
    assert propagate(None, details(timeout=None), own=20).timeout == 20
    assert propagate(None, details(timeout=60), own=20).timeout == 60
    assert list(propagate(None, details(metadata=[("a", "1")])).metadata) == [("a", "1")]


def test_outgoing_timeout_is_the_smaller_of_remaining_and_own():
    soon = CallContext("/x", time.monotonic() + 3, ())

    assert propagate(soon, details(timeout=10)).timeout <= 3
    assert propagate(soon, details(timeout=1)).timeout == 1
    assert propagate(soon, details(timeout=None), own=20).timeout <= 3
    assert propagate(soon, details(timeout=None), own=2).timeout == 2


def test_no_deadline_upstream_keeps_the_own_timeout():
    assert propagate(CallContext("/x", None, ()), details(timeout=7)).timeout == 7
    assert propagate(CallContext("/x", None, ()), details(timeout=None), own=9).timeout == 9


def test_an_expired_deadline_gives_zero_not_a_negative_timeout():
    assert propagate(CallContext("/x", time.monotonic() - 1, ()), details(timeout=7)).timeout == 0.0


def test_streams_get_no_default_timeout_only_the_served_deadline():
    assert propagate(None, details(timeout=None), own=None).timeout is None
    assert propagate(CallContext("/x", None, ()), details(timeout=None), own=None).timeout is None
    soon = CallContext("/x", time.monotonic() + 3, ())
    assert propagate(soon, details(timeout=None), own=None).timeout <= 3


def test_propagated_headers_do_not_override_explicit_ones():
    call = CallContext("/x", None, (("x-request-id", "upstream"), ("traceparent", "tp")))

    out = propagate(call, details(metadata=[("x-request-id", "mine"), ("other", "1")]))

    assert sorted(out.metadata) == [("other", "1"), ("traceparent", "tp"), ("x-request-id", "mine")]


def test_a_client_spans_trace_headers_replace_the_served_calls_and_the_callers_own(mesh_config):
    """The next hop's parent is the client span; everything else is passed on once."""
    served = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    span = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    call = CallContext("/x", None, (("x-request-id", "r1"), ("traceparent", served), ("tracestate", "a=1")))
    probe = Telemetry(mesh_config, "test").client_probe("passengers")
    assert probe is not None
    outgoing = Outgoing(probe._method("/p.S/M", timed=True), None, [("traceparent", span)])

    out = propagate(call, details(metadata=[("traceparent", "mine"), ("other", "1")]), trace=outgoing)

    assert sorted(out.metadata) == [("other", "1"), ("traceparent", span), ("x-request-id", "r1")]
