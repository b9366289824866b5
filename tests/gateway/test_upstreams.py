"""Fronting any gRPC server: routes from reflection, several upstreams, and `mesh gateway` as a process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.gateway.server import Options
from services.runtime.server import create_server
from services.runtime.telemetry import Telemetry

from ..ports import free_port, held_by
from . import harness

MESH = Path(sys.executable).parent / "mesh"


@pytest.fixture(scope="module")
def passengers_backend(background, gateway_mesh):
    backend = background.run(create_server(gateway_mesh, "passengers", port=0))
    port = background.run(backend.start())
    yield f"127.0.0.1:{port}"
    background.run(backend.stop(0))


def test_routes_from_the_reflection_of_several_upstreams(
    background, gateway_mesh, kitchen, passengers_backend
):
    options = Options(upstreams=[kitchen.address, passengers_backend], auth=False)
    running = background.run(harness.start_gateway(gateway_mesh, options))
    try:
        assert running.request("GET", "/v1/things/a").json["title"] == "a thing"
        created = running.request(
            "POST", "/v1/passengers", {"displayName": "Ada", "email": "ada@example.com"}
        )
        assert created.status == 200
        assert running.request("GET", f"/v1/{created.json['name']}").json == created.json
        assert running.request("GET", "/healthz").json["upstreams"] == {
            kitchen.address: "SERVING",
            passengers_backend: "SERVING",
        }
        # our services' reflection serves the proto comments, so the document has them
        document = running.request("GET", "/openapi.json").json
        passenger = document["components"]["schemas"]["rideshare.passengers.v1.Passenger"]
        assert passenger["description"] == "A person who requests rides."
    finally:
        background.run(running.stop())


def test_calls_to_an_upstream_go_through_the_runtime_client(background, gateway_mesh, kitchen):
    """The same client as in the mesh: its telemetry counts each call as an edge to the upstream."""
    telemetry = Telemetry(gateway_mesh, "gateway")
    assert telemetry.metrics is not None
    options = Options(upstreams=[kitchen.address], auth=False)
    running = background.run(harness.start_gateway(gateway_mesh, options, telemetry))
    labels = {
        "caller": "gateway",
        "service": kitchen.address,
        "grpc_service": "gatewaytest.v1.Kitchen",
        "grpc_method": "GetThing",
        "grpc_code": "OK",
    }
    try:
        assert running.request("GET", "/v1/things/a").status == 200
        assert telemetry.metrics.registry.get_sample_value("mesh_client_calls_total", labels) == 1
    finally:
        background.run(running.stop())
        telemetry.close()


def test_an_upstream_without_reflection_is_a_clear_error(background, gateway_mesh):
    from services.gateway.api import ApiError

    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ApiError, match=f"upstream {address}: server reflection failed: UNAVAILABLE"):
        background.run(harness.start_gateway(gateway_mesh, Options(upstreams=[address], auth=False)))


def test_mesh_gateway_runs_as_a_process_and_stops_cleanly_on_sigterm(kitchen, tmp_path):
    config = harness.write_gateway_mesh(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [
            str(MESH),
            "gateway",
            "--config",
            str(config),
            "--upstream",
            kitchen.address,
            "--listen",
            f"127.0.0.1:{port}",
            "--no-auth",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # Wait until the gateway itself listens, then ask once: connecting to a port nobody binds
        # yet can connect the client to itself (TCP simultaneous open, the port being ephemeral),
        # and it then reads its own request back.
        deadline = time.monotonic() + harness.WAIT
        while not held_by(port, [process.pid]) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read()
        response = harness.request(port, "GET", "/v1/things/a")
        assert (response.status, response.json.get("name")) == (200, "things/a"), response.json
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=harness.WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_mesh_gateway_reports_a_taken_port(tmp_path, kitchen):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                str(MESH),
                "gateway",
                "--config",
                str(harness.write_gateway_mesh(tmp_path)),
                "--upstream",
                kitchen.address,
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 3
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
