"""Telemetry of a real mesh: /metrics on each admin port, `mesh stats`, `mesh graph`, one trace id per chain.

One mesh of all six services serves the module, with debug logs (every call
is logged) and every trace recorded; each service's admin port is a free
port. Counters only grow, so each test compares what it reads before and
after its own calls.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from .conftest import FREE_PORT, Grpcurl, Mesh, MeshFactory, repo_client, repo_services, wait_until
from .rides import SERVICES, Rides, near, spot

pytestmark = pytest.mark.e2e

#: Spans are written by a background thread about once a second.
TRACE_FILE_PATIENCE = 15.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    services = {name: {**body, "admin_port": FREE_PORT} for name, body in repo_services().items()}
    with MeshFactory(tmp_path_factory) as factory:
        mesh = factory(
            services,
            client=repo_client(),
            log_level="debug",
            telemetry={"sample_ratio": 1.0},
            gateway={"port": FREE_PORT},
        )
        yield mesh.start()


@pytest.fixture(scope="module")
def api_key(mesh: Mesh) -> str:
    code, out, err = mesh.mesh("keys", "create", "telemetry-test", "--scopes", "rides")
    assert code == 0, err
    return out.split()[0]


def rest(mesh: Mesh, api_key: str, path: str, body: dict, traceparent: str, token: str = "") -> dict:
    """POST `body` to the gateway as JSON, with an API key (and a user's token) and a `traceparent`."""
    headers = {"content-type": "application/json", "x-api-key": api_key, "traceparent": traceparent}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{mesh.document['gateway']['port']}{path}",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        answer: dict = json.load(response)
    return answer


@pytest.fixture(scope="module")
def rides(mesh: Mesh, grpcurl: Grpcurl) -> Rides:
    return Rides(mesh, grpcurl)


def new_traceparent() -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


def metrics(mesh: Mesh, service: str) -> str:
    port = mesh.document["services"][service]["admin_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    return text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the one sample of `name` with these labels (among others), 0 if none."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def request_trip(rides: Rides, traceparent: str | None = None) -> dict:
    """A passenger asks for a trip near an available driver: trips calls passengers, billing, drivers,
    and its outbox then notifies the driver."""
    pickup = spot()
    passenger = rides.passenger()
    rides.driver(near(pickup, 200))
    body = {
        "passenger": passenger["name"],
        "pickup": pickup,
        "dropoff": near(pickup, 3000),
        "payment_method": "pm_card_visa",
    }
    flags = ("-H", f"traceparent: {traceparent}") if traceparent else ()
    code, out, err = rides.grpcurl(
        rides.mesh.address("trips"), f"{SERVICES['trips']}/RequestTrip", data=body, flags=flags
    )
    assert code == 0, err
    trip: dict = json.loads(out)
    return trip


def test_metrics_count_what_was_called_on_both_sides(mesh, rides):
    get = {"grpc_method": "GetPassenger", "grpc_code": "OK"}
    before_server = sample(metrics(mesh, "passengers"), "mesh_server_calls_total", caller="trips", **get)
    before_client = sample(
        metrics(mesh, "trips"), "mesh_client_calls_total", caller="trips", service="passengers", **get
    )
    created_before = sample(
        metrics(mesh, "passengers"),
        "mesh_server_calls_total",
        caller="unknown",
        grpc_method="CreatePassenger",
    )

    for _ in range(3):
        request_trip(rides)

    passengers = metrics(mesh, "passengers")
    trips = metrics(mesh, "trips")
    assert sample(passengers, "mesh_server_calls_total", caller="trips", **get) == before_server + 3
    assert (
        sample(trips, "mesh_client_calls_total", caller="trips", service="passengers", **get)
        == before_client + 3
    )
    # grpcurl is not a mesh member: its calls count as from "unknown".
    assert (
        sample(passengers, "mesh_server_calls_total", caller="unknown", grpc_method="CreatePassenger")
        == created_before + 3
    )
    assert sample(trips, "mesh_server_call_duration_seconds_count", grpc_method="RequestTrip") >= 3
    assert (
        sample(trips, "mesh_client_call_duration_seconds_count", service="billing", grpc_method="QuoteFare")
        >= 3
    )
    assert sample(trips, "mesh_server_calls_in_flight", grpc_method="RequestTrip") == 0


def test_mesh_stats_shows_every_service_and_the_edges_trips_calls(mesh, rides):
    request_trip(rides)

    code, out, err = mesh.mesh("stats", "--json", "--window", "0")

    assert code == 0, err
    report = json.loads(out)
    services = {s["service"]: s for s in report["services"]}
    assert set(services) == {*SERVICES, "gateway"}
    assert all(s["instances_up"] == s["instances"] == 1 for s in services.values())
    assert services["trips"]["requests"] >= 1
    assert services["trips"]["success_rate"] == 1.0
    edges = {(e["caller"], e["service"]): e for e in report["edges"]}
    for callee in ("passengers", "billing", "drivers"):
        edge = edges[("trips", callee)]
        assert edge["source"] == "client"
        assert edge["requests"] >= 1
        assert edge["success_rate"] == 1.0
        assert edge["p99_ms"] > 0
    assert edges[("unknown", "trips")]["source"] == "server"


def test_mesh_stats_shows_what_the_trips_outbox_has_delivered(mesh, rides):
    request_trip(rides)  # the driver's "new trip" notification goes out through the outbox
    found: list[dict] = []

    def delivered() -> bool:
        code, out, err = mesh.mesh("stats", "--json", "--window", "0")
        assert code == 0, err
        found[:] = [
            o for o in json.loads(out)["outboxes"] if (o["service"], o["kind"]) == ("trips", "notice")
        ]
        return bool(found) and found[0]["delivered"] >= 1

    assert wait_until(delivered, 10.0, interval=0.2), found
    assert (found[0]["dead"], found[0]["failing_seconds"]) == (0, 0)


def test_mesh_stats_over_a_window_prints_the_table(mesh, rides):
    request_trip(rides)  # the edges it prints, whichever tests ran before

    code, out, err = mesh.mesh("stats", "--window", "1s")

    assert code == 0, err
    assert "SERVICE" in out
    assert re.search(r"^trips\s+1/1\s", out, re.MULTILINE)
    assert re.search(r"^trips\s+passengers\s", out, re.MULTILINE)


def test_mesh_graph_draws_the_observed_edges(mesh, rides):
    request_trip(rides)

    code, dot, err = mesh.mesh("graph", "--format", "dot")
    assert code == 0, err
    assert dot.startswith("digraph mesh {")
    assert '"trips" -> "passengers"' in dot
    assert '"trips" -> "drivers"' in dot

    svg_file = mesh.root / "graph.svg"
    code, _, err = mesh.mesh("graph", "--output", str(svg_file))
    assert code == 0, err
    root = ET.fromstring(svg_file.read_text())
    titles = {t.text for t in root.iter("{http://www.w3.org/2000/svg}title")}
    assert "trips -> billing" in titles


def log_services_with(mesh: Mesh, trace_id: str) -> set[str]:
    """The services whose log lines (as `mesh up` prints them) carry `trace_id`."""
    return {
        line.split("|", 1)[0].strip() for line in mesh.stdout().splitlines() if f"trace_id={trace_id}" in line
    }


def test_one_trace_id_follows_a_call_through_every_process_it_reaches(mesh, rides):
    trace_id = uuid.uuid4().hex
    request_trip(rides, traceparent=f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01")
    # The driver's "new trip" notification goes out later, from the trip service's outbox: same trace.
    chain = {"trips", "passengers", "billing", "drivers", "notifications"}

    assert wait_until(lambda: chain <= log_services_with(mesh, trace_id), 10.0), (
        f"trace {trace_id} logged only by {log_services_with(mesh, trace_id)}\n{mesh.stdout()[-5000:]}"
    )

    def spans() -> list[dict]:
        found = []
        for name in chain:
            path = mesh.data_dir / "traces" / f"{name}.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            found += [span for span in map(json.loads, lines) if span["trace_id"] == trace_id]
        return found

    def roots() -> list[tuple[str, str]]:
        recorded = spans()
        ids = {s["span_id"] for s in recorded}
        return [(s["service"], s["kind"]) for s in recorded if s["parent_span_id"] not in ids]

    # A process writes its spans in batches as they end (a client span before the server span it is
    # in): wait until every process has written the trace's spans, i.e. they hang together.
    assert wait_until(
        lambda: {s["service"] for s in spans()} == chain and len(roots()) == 1, TRACE_FILE_PATIENCE
    ), f"spans of {trace_id} from {sorted({s['service'] for s in spans()})}, roots {roots()}"
    # Every span but the first server span of trips hangs under another span of the same trace.
    assert roots() == [("trips", "SERVER")]


def test_one_rest_request_has_one_trace_id_from_the_gateway_to_the_notification(mesh, rides, api_key):
    pickup = spot()
    account = {"email": f"{uuid.uuid4().hex[:12]}@example.com", "password": "a rider's password"}
    passenger = rest(mesh, api_key, "/v1/passengers", {"displayName": "Ada", **account}, new_traceparent())
    session = rest(mesh, api_key, "/v1/passengers:signIn", account, new_traceparent())
    rides.driver(near(pickup, 200))
    trace_id = uuid.uuid4().hex
    body = {
        "passenger": passenger["name"],
        "pickup": pickup,
        "dropoff": near(pickup, 3000),
        "paymentMethod": "pm_card_visa",
    }

    trip = rest(
        mesh,
        api_key,
        "/v1/trips",
        body,
        f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01",
        token=session["accessToken"],
    )

    assert trip["name"].startswith("trips/")
    chain = {"gateway", "trips", "passengers", "billing", "drivers", "notifications"}
    assert wait_until(lambda: chain <= log_services_with(mesh, trace_id), 10.0), (
        f"trace {trace_id} logged only by {log_services_with(mesh, trace_id)}\n{mesh.stdout()[-5000:]}"
    )
