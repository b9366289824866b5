"""What the runtime does around every handler: error mapping, INTERNAL with a correlation id, logs."""

from __future__ import annotations

import io
import json
import logging
import re

import grpc
import pytest
from rideshare.passengers.v1 import passengers_pb2 as pb
from rideshare.passengers.v1 import passengers_pb2_grpc

from services.runtime import log
from services.runtime.errors import FailedPrecondition
from services.runtime.server import Service

from ..conftest import with_port

GET = "/rideshare.passengers.v1.PassengerService/GetPassenger"
SOME_NAME = "passengers/" + "a" * 32


@pytest.fixture
def json_log():
    """Everything the rideshare loggers write, as the JSON lines a process would print."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log.JsonFormatter())
    logger = logging.getLogger("rideshare")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def fail_store(passengers, monkeypatch, exc: Exception) -> None:
    store = passengers.server.services[0].servicer.store

    def broken(passenger_id: str) -> pb.Passenger:
        raise exc

    monkeypatch.setattr(store, "get", broken)


def test_unexpected_exception_is_internal_with_a_correlation_id(passengers, monkeypatch, json_log):
    fail_store(passengers, monkeypatch, RuntimeError("db password is hunter2"))

    failure = passengers.fail(
        passengers.stub.GetPassenger(
            pb.GetPassengerRequest(name=SOME_NAME), metadata=[("x-request-id", "r-42")]
        )
    )

    assert failure.code is grpc.StatusCode.INTERNAL
    match = re.fullmatch(
        r"internal error; quote correlation id ([0-9a-f]{16}) when reporting it", failure.message
    )
    assert match
    correlation_id = match.group(1)
    assert failure.info.reason == "INTERNAL"
    assert failure.info.domain == "passengers.rideshare"
    assert dict(failure.info.metadata) == {"correlation_id": correlation_id}
    sent = failure.status.SerializeToString()
    for secret in (b"hunter2", b"Traceback", b"RuntimeError", b".py"):
        assert secret not in sent

    [logged] = [e for e in json_log() if e.get("correlation_id") == correlation_id]
    assert logged["level"] == "error"
    assert logged["logger"] == "rideshare.errors"
    assert logged["method"] == GET
    assert logged["request_id"] == "r-42"
    assert "RuntimeError: db password is hunter2" in logged["exception"]


def test_each_failure_gets_its_own_correlation_id(passengers, monkeypatch):
    fail_store(passengers, monkeypatch, KeyError("x"))

    ids = {
        passengers.fail(passengers.stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME))).info.metadata[
            "correlation_id"
        ]
        for _ in range(3)
    }

    assert len(ids) == 3


def test_mesh_errors_keep_their_code_reason_and_metadata(passengers, monkeypatch):
    fail_store(
        passengers, monkeypatch, FailedPrecondition("suspended", reason="SUSPENDED", metadata={"k": "v"})
    )

    failure = passengers.fail(passengers.stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME)))

    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.message == "suspended"
    assert (failure.info.reason, failure.info.domain) == ("SUSPENDED", "passengers.rideshare")
    assert dict(failure.info.metadata) == {"k": "v"}


def test_the_server_keeps_serving_after_a_handler_failed(passengers, monkeypatch):
    fail_store(passengers, monkeypatch, RuntimeError("once"))
    passengers.fail(passengers.stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME)))
    monkeypatch.undo()

    failure = passengers.fail(passengers.stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME)))

    assert failure.code is grpc.StatusCode.NOT_FOUND


def test_validation_runs_before_the_handler(passengers, monkeypatch):
    called = []
    monkeypatch.setattr(passengers.server.services[0].servicer.store, "get", called.append)

    failure = passengers.fail(passengers.stub.GetPassenger(pb.GetPassengerRequest(name="nope")))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["name"]
    assert failure.info.domain == "passengers.rideshare"
    assert called == []


def test_failed_calls_are_logged_with_code_and_call_fields(passengers, json_log):
    passengers.fail(
        passengers.stub.GetPassenger(
            pb.GetPassengerRequest(name=SOME_NAME), metadata=[("x-request-id", "r-7")]
        )
    )

    [entry] = passengers.settled(
        lambda: [e for e in json_log() if e["logger"] == "rideshare.access"], "the access log line"
    )
    assert entry["msg"] == "rpc finished"
    assert entry["code"] == "NOT_FOUND"
    assert entry["method"] == GET
    assert entry["request_id"] == "r-7"
    assert isinstance(entry["duration_ms"], float)


class Forwarder(passengers_pb2_grpc.PassengerServiceServicer):
    """Answers GetPassenger by asking the mesh's passenger service."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime

    async def GetPassenger(self, request, context):
        return await self.runtime.clients.stub(passengers_pb2_grpc.PassengerServiceStub).GetPassenger(request)


def forwarding(runtime) -> list[Service]:
    return [
        Service(
            descriptor=pb.DESCRIPTOR.services_by_name["PassengerService"],
            servicer=Forwarder(runtime),
            register=passengers_pb2_grpc.add_PassengerServiceServicer_to_server,
        )
    ]


def test_a_downstream_that_is_down_is_unavailable_not_internal(serve, mesh_config, json_log):
    gone = serve()
    port = gone.port
    gone.stop()
    front = serve(config=with_port(mesh_config, "passengers", port), make=forwarding)

    failure = front.fail(front.stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME)))

    assert failure.code is grpc.StatusCode.UNAVAILABLE
    assert any(e.get("downstream_code") == "UNAVAILABLE" for e in json_log())


def test_a_downstream_error_the_handler_did_not_expect_is_internal(serve, mesh_config):
    backend = serve()
    front = serve(config=with_port(mesh_config, "passengers", backend.port), make=forwarding)

    failure = front.fail(front.stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME)))

    assert failure.code is grpc.StatusCode.INTERNAL
    assert "correlation id" in failure.message
