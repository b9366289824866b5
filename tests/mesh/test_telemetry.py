"""Metrics and spans of the calls a service serves and makes (telemetry.py, tracing.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import ssl
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client import generate_latest
from rideshare.passengers.v1 import passengers_pb2 as pb
from rideshare.passengers.v1 import passengers_pb2_grpc

from services.gateway.telemetry import HttpTracing
from services.runtime import log, telemetry
from services.runtime.client import Clients, _Propagate
from services.runtime.config import MeshConfig, TelemetryConfig
from services.runtime.telemetry import Telemetry, caller_from_user_agent
from services.runtime.tracing import (
    Tracing,
    continued,
    current_ids,
    current_traceparent,
    end_span,
    remote_parent,
    trace_file,
)

from ..conftest import Running, with_port
from .peers import Peer

SERVICE = "rideshare.passengers.v1.PassengerService"
MISSING = "passengers/" + "a" * 32
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def recorded(config: MeshConfig, traces: str = "file", sample_ratio: float = 1.0) -> MeshConfig:
    return dataclasses.replace(config, telemetry=TelemetryConfig(traces=traces, sample_ratio=sample_ratio))


def value(running: Running, name: str, **labels: str) -> float:
    metrics = running.server.runtime.telemetry.metrics
    assert metrics is not None
    return metrics.registry.get_sample_value(name, labels) or 0.0


def calls(running: Running, method: str, code: str, caller: str = "unknown") -> float:
    return value(
        running,
        "mesh_server_calls_total",
        service="passengers",
        caller=caller,
        grpc_service=SERVICE,
        grpc_method=method,
        grpc_code=code,
    )


def create(running: Running, stub=None) -> pb.Passenger:
    draft = pb.Passenger(display_name="Ada", email="ada@example.com")
    return running.call((stub or running.stub).CreatePassenger(pb.CreatePassengerRequest(passenger=draft)))


@pytest.fixture
def json_log():
    """The JSON lines the rideshare loggers write while the test runs (debug level)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log.JsonFormatter())
    logger = logging.getLogger("rideshare")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_every_served_call_is_counted_by_method_caller_and_code(passengers):
    created = create(passengers)
    passengers.call(passengers.stub.GetPassenger(pb.GetPassengerRequest(name=created.name)))
    passengers.fail(passengers.stub.GetPassenger(pb.GetPassengerRequest(name=MISSING)))
    passengers.fail(passengers.stub.GetPassenger(pb.GetPassengerRequest(name="nonsense")))
    labels = {"service": "passengers", "grpc_service": SERVICE, "grpc_method": "GetPassenger"}
    # A failed call is counted in the wrapper's `finally`, once its status is on the way to the client.
    passengers.settled(
        lambda: value(passengers, "mesh_server_calls_in_flight", **labels) == 0, "the calls to end"
    )

    assert calls(passengers, "CreatePassenger", "OK") == 1
    assert calls(passengers, "GetPassenger", "OK") == 1
    assert calls(passengers, "GetPassenger", "NOT_FOUND") == 1
    assert calls(passengers, "GetPassenger", "INVALID_ARGUMENT") == 1
    assert value(passengers, "mesh_server_call_duration_seconds_count", **labels) == 3
    assert value(passengers, "mesh_server_call_duration_seconds_sum", **labels) > 0
    assert value(passengers, "mesh_server_calls_in_flight", **labels) == 0


def test_a_mesh_caller_is_named_by_its_user_agent(passengers):
    channel = grpc.aio.insecure_channel(
        passengers.address, options=[("grpc.primary_user_agent", "rideshare-gateway")]
    )
    try:
        create(passengers, passengers_pb2_grpc.PassengerServiceStub(channel))
    finally:
        passengers.call(channel.close())

    assert calls(passengers, "CreatePassenger", "OK", caller="gateway") == 1
    assert calls(passengers, "CreatePassenger", "OK", caller="unknown") == 0


def test_caller_names_are_bounded_to_the_mesh():
    known = frozenset({"trips", "gateway"})

    assert caller_from_user_agent("rideshare-trips grpc-python-asyncio/1.85.3", known) == "trips"
    assert caller_from_user_agent("rideshare-gateway", known) == "gateway"
    assert caller_from_user_agent("rideshare-evil grpc-python/1.0", known) == "unknown"
    assert caller_from_user_agent("grpcurl/1.8.6 grpc-go/1.57.0", known) == "unknown"
    assert caller_from_user_agent(None, known) == "unknown"


def test_a_certificate_identity_names_the_caller_when_one_is_given(passengers, monkeypatch):
    monkeypatch.setattr(telemetry, "_identity_source", lambda context: "mesh")

    create(passengers)

    assert calls(passengers, "CreatePassenger", "OK", caller="mesh") == 1


def test_the_client_side_counts_each_edge(serve, mesh_config, loop):
    back = serve()
    config = with_port(mesh_config, "passengers", back.port)
    caller = Telemetry(config, "gateway")
    clients = Clients(config, caller="gateway", telemetry=caller)
    try:
        stub = clients.stub(passengers_pb2_grpc.PassengerServiceStub)
        created = loop.call(
            stub.CreatePassenger(
                pb.CreatePassengerRequest(passenger=pb.Passenger(display_name="Ada", email="a@b.example"))
            )
        )
        loop.call(stub.GetPassenger(pb.GetPassengerRequest(name=created.name)))
        loop.fail(stub.GetPassenger(pb.GetPassengerRequest(name=MISSING)))
    finally:
        loop.call(clients.close())

    assert caller.metrics is not None
    edge = {
        "caller": "gateway",
        "service": "passengers",
        "grpc_service": SERVICE,
        "grpc_method": "GetPassenger",
    }
    sample = caller.metrics.registry.get_sample_value
    assert sample("mesh_client_calls_total", {**edge, "grpc_code": "OK"}) == 1
    assert sample("mesh_client_calls_total", {**edge, "grpc_code": "NOT_FOUND"}) == 1
    assert sample("mesh_client_call_duration_seconds_count", edge) == 2
    assert sample("mesh_client_calls_in_flight", edge) == 0
    assert calls(back, "GetPassenger", "NOT_FOUND", caller="gateway") == 1


def test_metrics_off_records_nothing(serve, mesh_config):
    config = dataclasses.replace(mesh_config, telemetry=TelemetryConfig(metrics=False, traces="off"))
    running = serve(config=config)

    create(running)

    assert running.server.runtime.telemetry.metrics is None
    assert running.server.runtime.telemetry.server_probe("/x.S/M") is None


def test_the_admin_port_serves_the_metrics(passengers):
    create(passengers)
    telemetry_of = passengers.server.runtime.telemetry
    port = telemetry_of.serve_metrics("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        telemetry_of.close()

    assert 'mesh_server_calls_total{caller="unknown",grpc_code="OK",grpc_method="CreatePassenger"' in text
    assert "process_start_time_seconds" in text


def test_a_served_call_continues_the_callers_trace_and_logs_carry_it(serve, mesh_config, json_log):
    running = serve(config=recorded(mesh_config))

    running.fail(
        running.stub.GetPassenger(
            pb.GetPassengerRequest(name=MISSING), metadata=[("traceparent", TRACEPARENT)]
        )
    )
    running.stop()

    [finished] = running.settled(
        lambda: [e for e in json_log() if e["msg"] == "rpc finished"], "the access log line"
    )
    assert finished["trace_id"] == TRACE_ID
    assert len(finished["span_id"]) == 16
    spans = [
        json.loads(line) for line in trace_file(mesh_config.data_dir, "passengers").read_text().splitlines()
    ]
    [span] = [s for s in spans if s["trace_id"] == TRACE_ID]
    assert span["kind"] == "SERVER"
    assert span["parent_span_id"] == "00f067aa0ba902b7"
    assert span["span_id"] == finished["span_id"]
    assert span["name"] == f"{SERVICE}/GetPassenger"
    assert span["attributes"]["rpc.grpc.status_code"] == "NOT_FOUND"
    assert span["status"] == "UNSET"  # a caller's mistake is not the server's error


def test_with_tracing_off_log_lines_still_carry_the_incoming_trace_id(serve, mesh_config, json_log):
    running = serve(config=recorded(mesh_config, traces="off"))

    running.fail(
        running.stub.GetPassenger(
            pb.GetPassengerRequest(name=MISSING), metadata=[("traceparent", TRACEPARENT)]
        )
    )

    [finished] = running.settled(
        lambda: [e for e in json_log() if e["msg"] == "rpc finished"], "the access log line"
    )
    assert finished["trace_id"] == TRACE_ID
    assert "span_id" not in finished


def test_an_unsampled_call_still_has_a_trace_id_in_its_logs(serve, mesh_config, json_log):
    running = serve(config=recorded(mesh_config, sample_ratio=0.0))

    running.fail(running.stub.GetPassenger(pb.GetPassengerRequest(name=MISSING)))
    running.stop()

    [finished] = running.settled(
        lambda: [e for e in json_log() if e["msg"] == "rpc finished"], "the access log line"
    )
    assert len(finished["trace_id"]) == 32
    assert not trace_file(mesh_config.data_dir, "passengers").exists()


def test_an_unrecorded_new_trace_is_one_trace_for_the_logs_and_every_downstream_call(mesh_config):
    tracing = Tracing(TelemetryConfig(sample_ratio=0.0), "trips", "i", mesh_config.data_dir)
    span, token = tracing.server_span("s.S/M", None, None, {})
    try:
        assert span is None
        ids = current_ids()
        assert ids is not None
        assert current_ids() == ids  # made once, on first use
        for _ in range(2):
            client, headers = tracing.client_span("s.S/Other", {})
            assert client is None
            assert dict(headers)["traceparent"] == f"00-{ids['trace_id']}-{ids['span_id']}-00"
        assert current_traceparent() == f"00-{ids['trace_id']}-{ids['span_id']}-00"
    finally:
        end_span(span, "OK", False, token)
        tracing.shutdown()
    assert current_ids() is None


def test_a_caller_that_does_not_record_its_trace_is_continued_unrecorded(mesh_config):
    """Parent-based: the caller's `sampled` flag wins over our ratio, and its ids reach logs and next hops."""
    tracing = Tracing(TelemetryConfig(sample_ratio=1.0), "trips", "i", mesh_config.data_dir)
    unsampled = TRACEPARENT[:-2] + "00"
    span, token = tracing.server_span("s.S/M", unsampled, "vendor=1", {})
    try:
        assert span is None
        assert current_ids() == {"trace_id": TRACE_ID, "span_id": "00f067aa0ba902b7"}
        client, headers = tracing.client_span("s.S/Other", {})
        assert client is None
        assert headers == [("traceparent", unsampled), ("tracestate", "vendor=1")]
        assert current_traceparent() == unsampled
    finally:
        end_span(span, "OK", False, token)
        tracing.shutdown()
    assert current_ids() is None
    assert not trace_file(mesh_config.data_dir, "trips").exists()


@pytest.mark.parametrize(
    "header",
    [
        "",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # all-zero trace id
        f"00-{TRACE_ID}-" + "0" * 16 + "-01",  # all-zero parent id
        f"ff-{TRACE_ID}-00f067aa0ba902b7-01",  # forbidden version
        f"00-{TRACE_ID}-00f067aa0ba902b7",  # too short
        f"00_{TRACE_ID}_00f067aa0ba902b7_01",
        f"00-{TRACE_ID[:-1]}x-00f067aa0ba902b7-01",
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(header):
    assert remote_parent(header, None) is None


def test_a_valid_traceparent_is_the_remote_parent():
    from opentelemetry import trace

    parent = remote_parent(TRACEPARENT, "vendor=1")

    assert parent is not None
    context = trace.get_current_span(parent).get_span_context()
    assert f"{context.trace_id:032x}" == TRACE_ID
    assert context.is_remote
    assert context.trace_flags.sampled
    assert context.trace_state.get("vendor") == "1"


def test_work_continued_later_joins_the_trace_it_was_queued_in(mesh_config, loop):
    tracing = Tracing(TelemetryConfig(sample_ratio=1.0), "trips", "i", mesh_config.data_dir)
    span, token = tracing.server_span("s.S/M", TRACEPARENT, None, {})
    queued = current_traceparent()
    end_span(span, "OK", False, token)
    tracing.shutdown()

    assert current_traceparent() == ""
    assert queued.split("-")[1] == TRACE_ID
    with continued(queued):
        assert current_ids() == {"trace_id": TRACE_ID, "span_id": queued.split("-")[2]}
    assert current_ids() is None
    with continued("garbage"):
        assert current_ids() is None


def test_the_gateway_middleware_traces_and_logs_each_request(mesh_config, loop, json_log):
    telemetry_of = Telemetry(recorded(mesh_config), "gateway")
    telemetry_of.start("127.0.0.1:1")
    seen: list[dict | None] = []

    async def app(scope, receive, send):
        seen.append(current_ids())
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": b""}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/trips/x",
        "headers": [(b"traceparent", TRACEPARENT.encode())],
    }
    loop.call(HttpTracing(app, telemetry_of)(scope, receive, send))
    telemetry_of.close()

    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert seen[0] is not None
    assert seen[0]["trace_id"] == TRACE_ID
    [line] = [e for e in json_log() if e["msg"] == "http request finished"]
    assert (line["status"], line["path"], line["trace_id"]) == (404, "/v1/trips/x", TRACE_ID)
    spans = [json.loads(x) for x in trace_file(mesh_config.data_dir, "gateway").read_text().splitlines()]
    assert [(s["name"], s["kind"], s["attributes"]["http.response.status_code"]) for s in spans] == [
        ("HTTP GET", "SERVER", 404)
    ]


def test_with_an_otlp_endpoint_spans_go_to_the_collector(mesh_config):
    from concurrent import futures

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        settings = TelemetryConfig(traces="otlp", otlp_endpoint=f"http://127.0.0.1:{port}", sample_ratio=1.0)
        tracing = Tracing(settings, "passengers", "127.0.0.1:1", mesh_config.data_dir)
        span, token = tracing.server_span("s.S/M", TRACEPARENT, None, {"rpc.system": "grpc"})
        end_span(span, "OK", False, token)
        tracing.shutdown()
    finally:
        server.stop(0)

    [request] = received
    [resource_spans] = request.resource_spans
    names = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert names["service.name"] == "passengers"
    [exported] = resource_spans.scope_spans[0].spans
    assert exported.name == "s.S/M"
    assert exported.trace_id.hex() == TRACE_ID
    assert not trace_file(mesh_config.data_dir, "passengers").exists()


def test_with_tls_the_certificate_names_the_caller_not_the_user_agent(mesh_config):
    config = dataclasses.replace(mesh_config, tls=dataclasses.replace(mesh_config.tls, enabled=True))
    named = Telemetry(config, "passengers").caller

    assert named(Peer(b"spiffe://rideshare.local/service/gateway"), "rideshare-passengers") == "gateway"
    assert named(Peer(b"spiffe://rideshare.local/service/intruder"), "rideshare-gateway") == "unknown"
    assert named(Peer(b"spiffe://elsewhere/service/gateway"), "rideshare-gateway") == "unknown"
    assert named(Peer(None), "rideshare-gateway") == "unknown"


class _Stream:
    """A server-streaming call as the interceptor sees it: done callbacks and a final code."""

    def __init__(self) -> None:
        self.callbacks: list = []

    def add_done_callback(self, callback) -> None:
        self.callbacks.append(callback)

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def finish(self) -> None:
        for callback in self.callbacks:
            callback(self)


def test_a_client_stream_is_counted_when_it_ends_and_not_timed(mesh_config, loop):
    caller = Telemetry(mesh_config, "gateway")
    probe = caller.client_probe("notifications")
    assert probe is not None
    stream = _Stream()

    async def continuation(details, request):
        return stream

    method = b"/rideshare.notifications.v1.NotificationService/StreamNotifications"
    details = grpc.aio.ClientCallDetails(method, None, grpc.aio.Metadata(), None, None)
    outgoing = probe.begin(method, timed=False)
    assert outgoing is not None
    assert loop.call(probe.stream(continuation, details, None, outgoing)) is stream
    labels = {
        "caller": "gateway",
        "service": "notifications",
        "grpc_service": "rideshare.notifications.v1.NotificationService",
        "grpc_method": "StreamNotifications",
    }
    sample = caller.metrics.registry.get_sample_value
    assert sample("mesh_client_calls_in_flight", labels) == 1

    async def end() -> None:
        stream.finish()
        for _ in range(3):
            await asyncio.sleep(0)

    loop.call(end())

    assert sample("mesh_client_calls_in_flight", labels) == 0
    assert sample("mesh_client_calls_total", {**labels, "grpc_code": "CANCELLED"}) == 1
    # Not timed: a stream has no latency series at all (an empty one would read as "no calls").
    assert sample("mesh_client_call_duration_seconds_count", labels) is None


def test_health_checks_and_reflection_are_not_traffic(mesh_config, loop):
    caller = Telemetry(mesh_config, "gateway")
    probe = caller.client_probe("passengers")
    details = grpc.aio.ClientCallDetails(b"/grpc.health.v1.Health/Check", 1.0, None, None, None)

    async def continuation(details, request):
        return "the call"

    assert probe.begin(details.method, timed=True) is None
    assert loop.call(_Propagate(5.0, probe).intercept_unary_unary(continuation, details, None)) == "the call"
    assert 'grpc_method="Check"' not in generate_latest(caller.metrics.registry).decode()


@pytest.fixture
def admin(mesh_config, monkeypatch):
    """A process's admin port (/metrics) on a free port, at most 4 connections; `admin(timeout)`."""
    monkeypatch.setattr(telemetry, "ADMIN_CONNECTIONS", 4)
    started = []

    def serve(timeout: float = 60.0) -> int:
        monkeypatch.setattr(telemetry._AdminHandler, "timeout", timeout)
        served = Telemetry(mesh_config, "passengers")
        started.append(served)
        return served.serve_metrics(mesh_config.telemetry.admin_host, 0)

    yield serve
    for served in started:
        served.close()


def other_addresses() -> list[str]:
    """This machine's addresses other than loopback (where the admin port must not answer)."""
    import socket

    found = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        found.add(probe.getsockname()[0])
        probe.close()
    except OSError:
        pass
    return sorted(a for a in found if not a.startswith("127."))


def test_the_admin_port_listens_on_this_machine_only_by_default(admin, mesh_config):
    import socket

    port = admin()
    assert mesh_config.telemetry.admin_host == "127.0.0.1"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
    others = other_addresses()
    if not others:
        pytest.skip("this machine has no address but loopback to try")
    for address in others:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()


def test_the_admin_port_serves_a_few_connections_and_closes_the_rest_at_once(admin):
    import socket

    port = admin()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
    extra = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        assert extra.recv(1) == b""  # past the cap: closed as it arrives, with nothing read
    finally:
        for connection in [extra, *idle]:
            connection.close()


def test_the_admin_port_closes_a_connection_that_sends_nothing(admin):
    import socket

    port = admin(timeout=0.2)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as silent:
        assert silent.recv(1) == b""  # closed by the server once its request timeout passed


# -- the admin port with TLS on -------------------------------------------------------------------------


#: How a client the admin port refuses sees it: a failed handshake, or the connection closed.
REFUSED = (urllib.error.URLError, ssl.SSLError, ConnectionError)


@pytest.fixture
def tls_admin(mesh_config, monkeypatch):
    """`admin` with `[tls]` on and the mesh's certificates made: (config, port)."""
    from services.mesh import certs

    monkeypatch.setattr(telemetry, "ADMIN_CONNECTIONS", 4)
    config = dataclasses.replace(mesh_config, tls=dataclasses.replace(mesh_config.tls, enabled=True))
    certs.ensure(config)
    served = Telemetry(config, "passengers")
    yield config, served.serve_metrics(config.telemetry.admin_host, 0)
    served.close()


def scrape_as(config, name: str | None, port: int) -> str:
    """GET /metrics over HTTPS trusting the mesh CA, presenting `name`'s certificate (None: none)."""
    from services.runtime import identity

    if name is None:
        context = ssl.create_default_context(cafile=identity.directory(config) / "ca.pem")
    else:
        context = identity.https_context(config, name, server=False)
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=10, context=context) as answer:
        text: str = answer.read().decode()
    return text


def test_with_tls_the_admin_port_serves_a_mesh_certificate_over_https(tls_admin):
    config, port = tls_admin

    assert "process_start_time_seconds" in scrape_as(config, "mesh", port)
    assert "process_start_time_seconds" in scrape_as(config, "gateway", port)


def test_with_tls_the_admin_port_refuses_a_client_without_a_certificate(tls_admin):
    config, port = tls_admin

    with pytest.raises(REFUSED):  # refused at the handshake (TLS 1.3: at the first read)
        scrape_as(config, None, port)
    with pytest.raises(REFUSED):  # plain HTTP is not TLS at all
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)


def test_with_tls_the_admin_port_refuses_a_certificate_of_another_ca(tls_admin, tmp_path):
    from services.mesh import certs
    from services.runtime import identity

    config, port = tls_admin
    certs.ensure(config, tmp_path / "other")
    context = ssl.create_default_context(cafile=identity.directory(config) / "ca.pem")
    context.load_cert_chain(tmp_path / "other" / "mesh.pem", tmp_path / "other" / "mesh.key")

    with pytest.raises(REFUSED):
        urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=10, context=context)


def test_a_client_that_never_starts_the_handshake_holds_up_no_one(tls_admin, monkeypatch):
    """prometheus-client's own TLS option wraps the listening socket: its handshake runs where the
    server accepts, so one silent connection would stall every scrape until its timeout."""
    import socket

    monkeypatch.setattr(telemetry._AdminHandler, "timeout", 60.0)
    config, port = tls_admin
    with socket.create_connection(("127.0.0.1", port), timeout=30):
        assert "process_start_time_seconds" in scrape_as(config, "mesh", port)
