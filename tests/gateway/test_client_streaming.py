"""Client- and bidi-streaming RPCs over REST: one JSON request per line of the body.

`Kitchen.Sum` (client streaming) answers once, as JSON; `Kitchen.RunningSum`
(bidi) answers each request as a line of NDJSON (or an SSE event). Both run
in front of the backend's address (`--upstream`) and in mesh mode, against the
real test backend.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from services.gateway import api, routes
from services.gateway.server import Options
from services.runtime.config import load_config
from services.runtime.telemetry import Telemetry

from . import harness

NDJSON = {"content-type": "application/x-ndjson"}


def lines(*documents: Any) -> bytes:
    return b"".join(json.dumps(d).encode() + b"\n" for d in documents)


def unfinished_upload(port: int, path: str, line: bytes, until: bytes) -> bytes:
    """POST `line` as the first chunk of a body that never ends; what came back once it holds `until`.

    The connection closes on the way out, with the upload still open.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=harness.WAIT) as sock:
        sock.sendall(
            b"POST %s HTTP/1.1\r\nhost: test\r\ncontent-type: application/x-ndjson\r\n"
            b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (path.encode(), len(line), line)
        )
        received = b""
        while until not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
    return received


@pytest.fixture(scope="module")
def mesh_telemetry(tmp_path_factory: pytest.TempPathFactory, kitchen: harness.Kitchen) -> Telemetry:
    directory = tmp_path_factory.mktemp("kitchen-mesh")
    services = f'[services.kitchen]\nport = {kitchen.port}\npackage = "gatewaytest.v1"\n'
    config = load_config(harness.write_gateway_mesh(directory, services), env={})
    return Telemetry(config, "gateway")


@pytest.fixture(scope="module")
def mesh_gateway(
    background: harness.BackgroundLoop, descriptor_set: Path, mesh_telemetry: Telemetry
) -> Iterator[harness.RunningGateway]:
    """The gateway in mesh mode: the Kitchen is a mesh service, called through grpc.aio."""
    options = Options(descriptor_set=str(descriptor_set), auth=False)
    running = background.run(harness.start_gateway(mesh_telemetry.config, options, mesh_telemetry))
    yield running
    background.run(running.stop())


@pytest.fixture(params=["upstream", "mesh"])
def gateway(
    request: pytest.FixtureRequest,
    kitchen_gateway: harness.RunningGateway,
) -> harness.RunningGateway:
    if request.param == "upstream":
        return kitchen_gateway
    running: harness.RunningGateway = request.getfixturevalue("mesh_gateway")
    return running


def test_a_client_stream_sends_every_line_and_answers_once_as_json(gateway: harness.RunningGateway) -> None:
    body = lines({"value": 1, "label": "a"}, {"value": "2", "label": "b"}, {"value": 3})
    response = gateway.request("POST", "/v1/sum", body, NDJSON)
    assert response.status == 200, response.body
    assert response.header("content-type") == "application/json"
    assert response.json == {"total": "6", "count": 3, "labels": ["a", "b", ""]}


def test_blank_lines_and_a_last_line_without_newline_count_as_expected(
    gateway: harness.RunningGateway,
) -> None:
    body = b'\n{"value": 4}\n\n  \n{"value": 5}'
    response = gateway.request("POST", "/v1/sum", body, {"content-type": "application/json"})
    assert response.status == 200, response.body
    assert response.json == {"total": "9", "count": 2, "labels": ["", ""]}


def test_an_empty_body_is_a_stream_of_no_requests(gateway: harness.RunningGateway) -> None:
    response = gateway.request("POST", "/v1/sum", b"", NDJSON)
    assert response.status == 200, response.body
    assert response.json == {"total": "0", "count": 0, "labels": []}


def test_a_chunked_upload_is_read_as_it_comes_even_with_lines_split_across_chunks(
    gateway: harness.RunningGateway,
) -> None:
    body = lines(*({"value": n} for n in range(1, 101)))
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=harness.WAIT)
    try:
        connection.request("POST", "/v1/sum", body=iter(chunks), headers=NDJSON)
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == {"total": "5050", "count": 100, "labels": [""] * 100}
    finally:
        connection.close()


def test_path_values_go_into_every_request_of_the_stream(gateway: harness.RunningGateway) -> None:
    response = gateway.request("POST", "/v1/sums/x", lines({"value": 1}, {"value": 2}), NDJSON)
    assert response.status == 200, response.body
    assert response.json == {"total": "3", "count": 2, "labels": ["x", "x"]}


@pytest.mark.parametrize(
    ("second_line", "field", "says"),
    [
        (b'{"value": 2, "colour": "red"}', "colour", "unknown field"),
        (b'{"value": "two"}', "value", "two"),
        (b'{"value": 2', "body", "line 2 of the body: malformed JSON"),
        (b"[1, 2]", "body", "line 2 of the body: expected a JSON object"),
        (b'\xff{"value": 2}', "body", "line 2 of the body: is not UTF-8"),
    ],
)
def test_a_bad_line_fails_the_call_with_400_naming_the_line_and_the_field(
    gateway: harness.RunningGateway, second_line: bytes, field: str, says: str
) -> None:
    body = b'{"value": 1}\n' + second_line + b'\n{"value": 3}\n'
    response = gateway.request("POST", "/v1/sum", body, NDJSON)
    assert response.status == 400, response.body
    error = response.json
    assert error["code"] == 3
    assert error["message"].startswith("line 2 of the body: ")
    assert says in error["message"]
    assert "body: body:" not in error["message"]
    violations = next(d for d in error["details"] if d["@type"].endswith("BadRequest"))["fieldViolations"]
    assert violations[0]["field"] == field


def test_a_line_longer_than_the_body_limit_is_413(gateway: harness.RunningGateway) -> None:
    too_long = json.dumps({"label": "x" * 5000}).encode()  # the test mesh allows 4096 bytes
    response = gateway.request("POST", "/v1/sum", b'{"value": 1}\n' + too_long + b"\n", NDJSON)
    assert response.status == 413, response.body
    assert response.json["code"] == 8
    assert "line 2 of the body" in response.json["message"]


def test_a_stream_may_be_longer_than_the_body_limit_in_all(gateway: harness.RunningGateway) -> None:
    body = lines(*({"value": 1, "label": "y" * 100} for _ in range(100)))
    assert len(body) > 4096
    response = gateway.request("POST", "/v1/sum", body, NDJSON)
    assert response.status == 200, response.body
    assert response.json["count"] == 100


def test_a_long_stream_of_large_requests_arrives_whole_and_in_order(gateway: harness.RunningGateway) -> None:
    # 780 kB in ~12 HTTP reads, sent upstream as they come.
    body = lines(*({"value": n, "label": f"{n:04d}" + "x" * 3900} for n in range(200)))
    response = gateway.request("POST", "/v1/sum", body, NDJSON)
    assert response.status == 200, response.body[:200]
    answer = response.json
    assert (answer["total"], answer["count"]) == (str(sum(range(200))), 200)
    assert [label[:4] for label in answer["labels"]] == [f"{n:04d}" for n in range(200)]
    assert all(len(label) == 3904 for label in answer["labels"])


def test_a_body_that_is_not_json_lines_is_415(gateway: harness.RunningGateway) -> None:
    response = gateway.request("POST", "/v1/sum", b"value=1", {"content-type": "text/plain"})
    assert response.status == 415
    assert "application/x-ndjson" in response.json["message"]


def test_an_upstream_failure_is_the_mapped_http_error(gateway: harness.RunningGateway) -> None:
    response = gateway.request("POST", "/v1/sum", lines({"value": 1}, {"value": -2}), NDJSON)
    assert response.status == 400, response.body
    assert response.json["code"] == 3
    assert response.json["message"] == "value -2 is negative"


def test_a_bidi_stream_answers_each_request_as_a_line(gateway: harness.RunningGateway) -> None:
    body = lines({"value": 1, "label": "a"}, {"value": 2, "label": "b"}, {"value": 3, "label": "c"})
    response = gateway.request("POST", "/v1/running-sum", body, NDJSON)
    assert response.status == 200, response.body
    assert response.header("content-type") == "application/x-ndjson"
    answers = [json.loads(line) for line in response.body.splitlines()]
    assert answers == [
        {"result": {"total": "1", "count": 1, "labels": ["a"]}},
        {"result": {"total": "3", "count": 2, "labels": ["a", "b"]}},
        {"result": {"total": "6", "count": 3, "labels": ["a", "b", "c"]}},
    ]


def test_a_bidi_stream_as_server_sent_events(gateway: harness.RunningGateway) -> None:
    headers = {**NDJSON, "accept": "text/event-stream"}
    response = gateway.request("POST", "/v1/running-sum", lines({"value": 5}, {"value": 6}), headers)
    assert response.status == 200
    assert response.header("content-type") == "text/event-stream"
    events = [json.loads(part[len(b"data: ") :]) for part in response.body.split(b"\n\n") if part]
    assert [e["total"] for e in events] == ["5", "11"]


def test_a_bidi_stream_that_fails_midway_ends_with_an_error_line(gateway: harness.RunningGateway) -> None:
    response = gateway.request("POST", "/v1/running-sum", lines({"value": 1}, {"value": -1}), NDJSON)
    if response.status == 200:  # the first answer came before the failure
        last = json.loads(response.body.splitlines()[-1])
        error = last["error"]
    else:
        assert response.status == 400
        error = response.json
    assert error["code"] == 3
    assert error["message"] == "value -1 is negative"


def test_a_bidi_stream_with_a_bad_line_reports_the_line(gateway: harness.RunningGateway) -> None:
    response = gateway.request("POST", "/v1/running-sum", b'{"value": 1}\n{"value": []}\n', NDJSON)
    if response.status == 200:
        error = json.loads(response.body.splitlines()[-1])["error"]
    else:
        assert response.status == 400
        error = response.json
    assert error["code"] == 3
    assert error["message"].startswith("line 2 of the body: ")


def test_a_client_that_goes_away_mid_stream_cancels_the_upstream_call(
    gateway: harness.RunningGateway, kitchen: harness.Kitchen, background: harness.BackgroundLoop
) -> None:
    async def forget() -> None:
        kitchen.sums_ended.clear()

    background.run(forget())
    # A deadline far past the wait below: the call can only end that soon by being cancelled.
    unfinished_upload(gateway.port, "/v1/running-sum?timeout=30s", b'{"value": 1}\n', until=b'"total":"1"')
    background.run(asyncio.wait_for(kitchen.sums_ended.wait(), 10))


def test_in_the_mesh_every_kind_of_stream_is_counted_as_a_client_call(
    mesh_gateway: harness.RunningGateway, mesh_telemetry: Telemetry, background: harness.BackgroundLoop
) -> None:
    assert mesh_telemetry.metrics is not None
    registry = mesh_telemetry.metrics.registry
    wanted = (("Sum", "OK"), ("RunningSum", "OK"), ("Sum", "INVALID_ARGUMENT"), ("Count", "OK"))

    def counts() -> list[float]:
        return [
            registry.get_sample_value(
                "mesh_client_calls_total",
                {
                    "caller": "gateway",
                    "service": "kitchen",
                    "grpc_service": "gatewaytest.v1.Kitchen",
                    "grpc_method": method,
                    "grpc_code": code,
                },
            )
            or 0.0
            for method, code in wanted
        ]

    before = counts()
    assert mesh_gateway.request("POST", "/v1/sum", lines({"value": 1}), NDJSON).status == 200
    assert mesh_gateway.request("POST", "/v1/running-sum", lines({"value": 1}), NDJSON).status == 200
    assert mesh_gateway.request("POST", "/v1/sum", lines({"value": -1}), NDJSON).status == 400
    assert mesh_gateway.request("GET", "/v1/count/2").status == 200

    async def counted() -> None:  # a stream is counted when it ends, a moment after its answer
        while True:
            if all(now == then + 1 for now, then in zip(counts(), before, strict=True)):
                return
            await asyncio.sleep(0.01)

    background.run(counted())


def test_an_upstream_that_fails_early_is_answered_before_the_upload_ends(
    gateway: harness.RunningGateway,
) -> None:
    received = unfinished_upload(gateway.port, "/v1/sum", b'{"value": -1}\n', until=b"is negative")
    assert received.startswith(b"HTTP/1.1 400 ")


def test_a_stream_has_no_deadline_unless_the_client_asks(gateway: harness.RunningGateway) -> None:
    # Unary calls get `[client] timeout` by default; a stream lasts as long as its client stays.
    unlimited = gateway.request("GET", "/v1/count/1")
    assert unlimited.header("grpc-metadata-deadline-ms") == "none"
    limited = gateway.request("GET", "/v1/count/1?timeout=5s")
    assert 0 < int(limited.header("grpc-metadata-deadline-ms") or 0) < 6000  # grpc rounds up a little


def test_openapi_describes_a_request_stream_as_ndjson(kitchen_gateway: harness.RunningGateway) -> None:
    document = kitchen_gateway.request("GET", "/openapi.json").json
    body = document["paths"]["/v1/sum"]["post"]["requestBody"]
    assert list(body["content"]) == ["application/x-ndjson"]
    assert body["content"]["application/x-ndjson"]["schema"] == {
        "$ref": "#/components/schemas/gatewaytest.v1.SumRequest"
    }
    bidi = document["paths"]["/v1/running-sum"]["post"]["responses"]["200"]["content"]
    assert "application/x-ndjson" in bidi


def test_a_request_stream_binding_without_the_whole_body_is_left_out_with_a_reason(
    descriptor_set: Path, tmp_path: Path
) -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    kitchen = next(s for f in files.file for s in f.service if s.name == "Kitchen")
    rule = next(m for m in kitchen.method if m.name == "Sum").options.Extensions[annotations_pb2.http]
    rule.body = "label"  # one field cannot hold a stream of requests
    changed = tmp_path / "changed.binpb"
    changed.write_bytes(files.SerializeToString())

    table = routes.build(api.from_descriptor_set(changed))

    assert table.problems == [
        "/gatewaytest.v1.Kitchen/Sum: POST /v1/sum: a client-streaming method takes one request per line "
        'of the body, so it needs body: "*"'
    ]
    assert table.match("POST", "/v1/sum") is None
    assert table.match("POST", "/v1/sums/x") is not None  # its other binding takes the whole body
