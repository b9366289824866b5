"""The REST API fuzzed from its own OpenAPI document: no 5xx, and every answer as documented.

The whole mesh runs in this process (the six services on free ports, as
`mesh serve` builds them), with the real gateway (uvicorn) in front, keys off.
schemathesis reads `/openapi.json` from the running gateway and, for every
operation, sends generated requests (valid and invalid ones; a fixed number
per operation, derandomized so a run is repeatable) and checks each answer:
no 5xx, a documented status and content type, and a body that validates
against the documented schema (the message for 200, `Status` for errors).

Streams get a short deadline (`grpc-timeout`): a notification stream never
ends on its own, and a deadline after the stream started is a final error
line in a 200, not an error status.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.gateway import api, openapi, routes
from services.gateway.server import Options
from services.runtime.config import load_config
from services.runtime.server import MeshServer, create_server

from ..ports import free_ports
from ..whole_mesh import SERVICES, mesh_text
from . import harness

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
"""Generated requests per operation and mode: 12 keeps the run near 30 s; raise it for a deeper search."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def whole_mesh(
    background: harness.BackgroundLoop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[harness.RunningGateway]:
    """Every service of the project, and the gateway in front of them (no API keys)."""
    directory: Path = tmp_path_factory.mktemp("fuzz")
    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    path = directory / "mesh.toml"
    path.write_text(mesh_text(ports), encoding="utf-8")
    config = load_config(path, env={})
    servers: list[MeshServer] = []
    running: harness.RunningGateway | None = None
    try:
        for name in SERVICES:
            server = background.run(create_server(config, name, port=ports[name]))
            background.run(server.start())
            servers.append(server)
        running = background.run(harness.start_gateway(config, Options(auth=False)))
        yield running
    finally:
        if running is not None:
            background.run(running.stop())
        for server in reversed(servers):
            background.run(server.stop(0))


@pytest.fixture(scope="module")
def api_schema(whole_mesh: harness.RunningGateway) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"http://127.0.0.1:{whole_mesh.port}/openapi.json")


def _operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every operation, from the same document the gateway serves (no server needed)."""
    loaded = api.from_generated()
    document = openapi.document(loaded, routes.build(loaded), api_keys=False)
    return [(method.upper(), path) for path, item in document["paths"].items() for method in item]


OPERATIONS = _operations()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_generated_requests_get_documented_answers(api_schema, whole_mesh, method, path, mode):
    operation = api_schema[path][method]
    streaming = "application/x-ndjson" in str(operation.definition.raw.get("responses", {}))
    headers = {"grpc-timeout": "300m"} if streaming else None
    base_url = f"http://127.0.0.1:{whole_mesh.port}"

    @given(operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def answers_as_documented(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=30)

    try:
        answers_as_documented()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        pytest.skip("no part of this operation's input can be made invalid")
