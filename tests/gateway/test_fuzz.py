"""The REST API fuzzed from its own OpenAPI document: no 5xx, and every answer as documented.

The whole mesh runs in this process (the six services on free ports, as
`mesh serve` builds them), with the real gateway (uvicorn) in front, called as
a signed-in passenger through an application's key (rides scope): most
generated requests name someone else's resources, and must still get a
documented 4xx, never a 5xx.
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
) -> Iterator[tuple[harness.RunningGateway, dict[str, str]]]:
    """Every service of the project with the gateway in front, and the headers of a signed-in
    passenger calling through an application's key (rides scope)."""
    with harness.whole_mesh(background, tmp_path_factory.mktemp("fuzz")) as running:
        app = {"x-api-key": running.new_key("fuzzing app", frozenset({"rides"}))}
        account = {"email": "fuzz@example.com", "password": "fuzzing passenger"}
        created = running.request("POST", "/v1/passengers", {"displayName": "Fuzz", **account}, headers=app)
        assert created.status == 200, created.body
        session = running.request("POST", "/v1/passengers:signIn", account, headers=app)
        assert session.status == 200, session.body
        yield running, {**app, **harness.bearer(session.json)}


@pytest.fixture(scope="module")
def api_schema(whole_mesh: tuple[harness.RunningGateway, dict[str, str]]) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"http://127.0.0.1:{whole_mesh[0].port}/openapi.json")


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
    running, signed_in = whole_mesh
    headers = {**signed_in, "grpc-timeout": "300m"} if streaming else signed_in
    base_url = f"http://127.0.0.1:{running.port}"

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
