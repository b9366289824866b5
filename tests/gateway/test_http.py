"""The bridge over real HTTP (uvicorn) in front of a real gRPC server (the test Kitchen).

Covers what only a running bridge shows: statuses and error bodies, headers
and metadata in both directions, deadlines, limits, CORS, and streams.
"""

from __future__ import annotations

import base64
import http.client
import json

import pytest

from services.gateway.server import Options

from . import harness

GATEWAY_DOMAIN = "gateway.rideshare"


def error_of(response: harness.Response) -> tuple[int, str, list[str], list[str]]:
    """(gRPC code, ErrorInfo reason, detail types, BadRequest fields) of an error response."""
    body = response.json
    assert set(body) == {"code", "message", "details"}, body
    reasons = [d["reason"] for d in body["details"] if d["@type"].endswith("ErrorInfo")]
    fields = [
        v["field"] for d in body["details"] if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]
    ]
    return body["code"], (reasons[0] if reasons else ""), [d["@type"] for d in body["details"]], fields


def test_the_http_proto_examples_reach_the_backend(kitchen_gateway):
    assert kitchen_gateway.request("GET", "/ex1/v1/messages/123456").json == {"text": "messages/123456"}
    assert kitchen_gateway.request("GET", "/ex2/v1/messages/1?revision=2&sub.subfield=foo").json == {
        "messageId": "1",
        "revision": "2",
        "sub": {"subfield": "foo"},
    }
    assert kitchen_gateway.request("PATCH", "/ex3/v1/messages/1", {"text": "Hi!"}).json == {
        "messageId": "1",
        "message": {"text": "Hi!"},
    }
    assert kitchen_gateway.request("PATCH", "/ex4/v1/messages/1", {"text": "Hi!"}).json == {
        "messageId": "1",
        "text": "Hi!",
    }
    assert kitchen_gateway.request("GET", "/ex5/v1/users/me/messages/1").json == {
        "messageId": "1",
        "userId": "me",
    }
    assert kitchen_gateway.request("GET", "/ex6/v1/messages/1/foo").json["sub"] == {"subfield": "foo"}


def test_responses_are_proto3_json(kitchen_gateway):
    response = kitchen_gateway.request("GET", "/v1/things/a")

    assert response.status == 200
    assert response.header("content-type") == "application/json"
    assert response.json == {"name": "things/a", "title": "a thing", "size": str(2**40), "color": "COLOR_RED"}


def test_response_body_returns_one_field_and_custom_methods_route(kitchen_gateway):
    assert kitchen_gateway.request("GET", "/v1/files/a/b:content").json == base64.b64encode(b"hi").decode()
    assert kitchen_gateway.request("GET", "/v1/things/special").json["name"] == "things/special"
    assert kitchen_gateway.request("POST", "/v1/things/t1:archive", {}).json["name"] == "things/t1"
    assert kitchen_gateway.request("HEAD", "/v1/probe").status == 200
    assert kitchen_gateway.request("POST", "/gatewaytest.v1.Kitchen/Plain", {"id": "p"}).json["id"] == "p"


def test_headers_travel_as_metadata_and_response_metadata_comes_back(kitchen_gateway):
    response = kitchen_gateway.request(
        "GET",
        "/v1/echo/e1",
        headers={
            "authorization": "Bearer t",
            "x-request-id": "req-1",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "grpc-metadata-tenant": "acme",
            "grpc-metadata-blob-bin": base64.b64encode(b"\x01\x02").decode(),
            "cookie": "not-forwarded",
        },
    )

    assert response.status == 200
    assert response.header("grpc-metadata-seen-authorization") == "Bearer t"
    assert response.header("grpc-metadata-seen-x-request-id") == "req-1"
    assert response.header("grpc-metadata-seen-traceparent").startswith("00-0af7")
    assert response.header("grpc-metadata-seen-tenant") == "acme"
    assert response.header("grpc-metadata-seen-blob-bin") == base64.b64encode(b"\x01\x02").decode()
    assert response.header("grpc-metadata-seen-cookie") is None
    assert response.header("grpc-metadata-bin-bin") == base64.b64encode(b"\x00\x01").decode()
    assert response.header("grpc-trailer-trailer-key") == "t"


@pytest.mark.parametrize(
    ("headers", "query", "low", "high"),
    [
        ({}, "", 15_000, 20_000),  # the mesh's client timeout (20s in the test mesh)
        ({"grpc-timeout": "2S"}, "", 1_000, 2_000),
        ({}, "?timeout=1500ms", 500, 1_500),
        ({}, "?timeout=3S", 2_000, 3_000),
        ({"grpc-timeout": "10H"}, "", 25_000, 30_000),  # capped by gateway.max_timeout (30s)
    ],
)
def test_the_deadline_comes_from_grpc_timeout_or_the_timeout_parameter(
    kitchen_gateway, headers, query, low, high
):
    response = kitchen_gateway.request("GET", f"/v1/echo/e1{query}", headers=headers)

    # gRPC rounds the timeout it sends up a little: allow 10% above.
    assert low <= int(response.header("grpc-metadata-deadline-ms")) <= high * 1.1


@pytest.mark.parametrize(
    ("headers", "query", "field"),
    [({"grpc-timeout": "soon"}, "", "grpc-timeout"), ({}, "?timeout=x", "timeout")],
)
def test_a_bad_deadline_is_a_400_naming_it(kitchen_gateway, headers, query, field):
    response = kitchen_gateway.request("GET", f"/v1/echo/e1{query}", headers=headers)

    assert response.status == 400
    assert error_of(response)[3] == [field]


GRPC_TO_HTTP = [
    (1, 499),
    (2, 500),
    (3, 400),
    (4, 504),
    (5, 404),
    (6, 409),
    (7, 403),
    (8, 429),
    (9, 400),
    (10, 409),
    (11, 400),
    (12, 501),
    (13, 500),
    (14, 503),
    (15, 500),
    (16, 401),
]


@pytest.mark.parametrize(("code", "status"), GRPC_TO_HTTP)
def test_every_grpc_status_maps_to_its_http_status_with_the_rich_details(kitchen_gateway, code, status):
    response = kitchen_gateway.request("POST", "/v1/fail", {"code": code, "message": "as asked"})

    assert response.status == status
    body = response.json
    assert body["code"] == code
    assert body["message"] == "as asked"
    assert body["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "KITCHEN_FAILURE",
            "domain": "kitchen.test",
            "metadata": {"k": "v"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "code", "description": "asked for"}],
        },
    ]


def test_an_unknown_path_is_a_404_in_the_error_shape(kitchen_gateway):
    response = kitchen_gateway.request("GET", "/v1/nothing/here")

    assert response.status == 404
    assert error_of(response)[:2] == (5, "NO_ROUTE")


def test_a_wrong_method_is_a_405_with_allow(kitchen_gateway):
    response = kitchen_gateway.request("DELETE", "/v1/things/a")

    assert response.status == 405
    assert response.header("allow") == "GET, PATCH"
    assert error_of(response)[:2] == (12, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b'{"nope": 1}', "nope"),
        (b'{"int32Value": "x"}', "int32Value"),
        (b'{"nested": {"depth": "deep"}}', "nested.depth"),
        (b"[]", "body"),
    ],
)
def test_bad_json_is_a_400_naming_the_field(kitchen_gateway, body, field):
    response = kitchen_gateway.request("POST", "/v1/echo", body, {"content-type": "application/json"})

    assert response.status == 400
    code, reason, _, fields = error_of(response)
    assert (code, reason, fields) == (3, "INVALID_REQUEST", [field])


def test_a_body_over_the_limit_is_a_413(kitchen_gateway):
    response = kitchen_gateway.request("POST", "/v1/echo", {"id": "x" * 5000})

    assert response.status == 413
    assert error_of(response)[:2] == (8, "BODY_TOO_LARGE")


def test_a_chunked_body_over_the_limit_is_a_413(kitchen_gateway):
    connection = http.client.HTTPConnection("127.0.0.1", kitchen_gateway.port, timeout=harness.WAIT)
    try:
        chunks = (b'{"id": "' + b"x" * 1000 for _ in range(6))
        connection.request(
            "POST", "/v1/echo", body=chunks, headers={"content-type": "application/json"}, encode_chunked=True
        )
        response = connection.getresponse()
        assert response.status == 413
    finally:
        connection.close()


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
def test_a_body_that_is_not_json_is_a_415(kitchen_gateway, content_type):
    response = kitchen_gateway.request("POST", "/v1/echo", b"id=1", {"content-type": content_type})

    assert response.status == 415
    assert error_of(response)[:2] == (3, "UNSUPPORTED_MEDIA_TYPE")


def test_json_content_types_with_parameters_and_suffixes_are_accepted(kitchen_gateway):
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = kitchen_gateway.request("POST", "/v1/echo", b'{"id": "j"}', {"content-type": content_type})
        assert (response.status, response.json["id"]) == (200, "j")


def test_cors_answers_preflights_and_marks_responses_for_allowed_origins(kitchen_gateway):
    preflight = kitchen_gateway.request(
        "OPTIONS",
        "/v1/things/a",
        headers={
            "origin": "https://app.example",
            "access-control-request-method": "PATCH",
            "access-control-request-headers": "content-type, x-api-key",
        },
    )
    assert preflight.status == 204
    assert preflight.header("access-control-allow-origin") == "https://app.example"
    assert preflight.header("access-control-allow-methods") == "GET, PATCH"
    assert preflight.header("access-control-allow-headers") == "content-type, x-api-key"

    allowed = kitchen_gateway.request("GET", "/v1/things/a", headers={"origin": "https://app.example"})
    assert allowed.header("access-control-allow-origin") == "https://app.example"
    other = kitchen_gateway.request("GET", "/v1/things/a", headers={"origin": "https://evil.example"})
    assert other.header("access-control-allow-origin") is None


def test_healthz_reports_the_upstreams(kitchen_gateway, kitchen):
    response = kitchen_gateway.request("GET", "/healthz")

    assert response.status == 200
    assert response.json == {"status": "SERVING", "upstreams": {kitchen.address: "SERVING"}}


FUZZ = [
    ("GET", "/%", None),
    ("GET", "/v1/echo/%ZZ", None),
    ("GET", "/v1/echo/%C3%28", None),
    ("GET", "/v1/echo/x?%=%&&=&int32_value=%FF", None),
    ("POST", "/v1/echo", b"\x00\xff"),
    ("POST", "/v1/echo", b'{"when": 5, "wait": [], "mask": {}, "maybeInt": "x", "labels": []}'),
    ("POST", "/v1/echo", b'{"items": [1, 2], "labels": {"a": 1}}'),
    ("POST", "/v1/echo", b'{"int64Value": 1e400, "doubleValue": "x"}'),
    ("POST", "/v1/echo", b"1e999999"),
    ("POST", "/v1/echo", b'"' + b"\\ud800" + b'"'),
    ("POST", "/v1/echo", b"[" * 2000 + b"]" * 2000),
    ("POST", "/v1/echo", b'{"nested": ' + b'{"child": ' * 150 + b"{}" + b"}" * 151),
    ("PUT", "/v1/echo/1/nested", b'{"child": {"child": {"child": 7}}}'),
    ("GET", "/v1/count/-5", None),
    ("GET", "/v1/count/99999999999", None),
]


@pytest.mark.parametrize(("method", "path", "body"), FUZZ)
def test_no_input_gives_a_500(kitchen_gateway, method, path, body):
    headers = {"content-type": "application/json"} if body is not None else {}
    response = kitchen_gateway.request(method, path, body, headers)

    assert response.status < 500, response.body
    if response.status >= 400:
        error_of(response)


# -- streams -------------------------------------------------------------------------------------------


def stream_lines(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, list[bytes]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=harness.WAIT)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers.get("content-type", ""), response.read().splitlines()
    finally:
        connection.close()


def test_a_server_stream_is_newline_delimited_json(kitchen_gateway):
    status, content_type, lines = stream_lines(kitchen_gateway.port, "/v1/count/3")

    assert (status, content_type) == (200, "application/x-ndjson")
    assert [json.loads(line) for line in lines] == [
        {"result": {"n": 1}},
        {"result": {"n": 2}},
        {"result": {"n": 3}},
    ]


def test_a_stream_that_fails_after_it_started_ends_with_an_error_line(kitchen_gateway):
    status, _, lines = stream_lines(kitchen_gateway.port, "/v1/count/5?fail_after=2")

    assert status == 200
    parsed = [json.loads(line) for line in lines]
    assert parsed[:2] == [{"result": {"n": 1}}, {"result": {"n": 2}}]
    error = parsed[2]["error"]
    assert (error["code"], error["message"]) == (9, "counting failed")
    assert error["details"][0]["reason"] == "KITCHEN_FAILURE"
    assert len(parsed) == 3


def test_a_stream_that_fails_before_any_message_is_a_plain_http_error(kitchen_gateway):
    response = kitchen_gateway.request("GET", "/v1/count/5?fail_after=-1")

    assert response.status == 400
    assert response.json["message"] == "refused at once"
    assert error_of(response)[:2] == (9, "KITCHEN_FAILURE")


def test_a_stream_as_server_sent_events(kitchen_gateway):
    status, content_type, lines = stream_lines(
        kitchen_gateway.port, "/v1/count/5?fail_after=1", {"accept": "text/event-stream"}
    )

    assert (status, content_type) == (200, "text/event-stream")
    assert lines[:2] == [b'data: {"n":1}', b""]
    assert lines[2] == b"event: error"
    assert json.loads(lines[3].removeprefix(b"data: "))["code"] == 9


def test_an_idle_event_stream_gets_keep_alive_comments(background, gateway_mesh, kitchen, descriptor_set):
    config = harness.mesh_config(gateway_mesh, sse_keepalive=0.05)
    options = Options(upstreams=[kitchen.address], descriptor_set=str(descriptor_set), auth=False)
    running = background.run(harness.start_gateway(config, options))
    try:
        headers = {"accept": "text/event-stream"}
        status, _, lines = stream_lines(running.port, "/v1/count/3?interval=0.3s", headers)
        quiet, _, ndjson = stream_lines(running.port, "/v1/count/3?interval=0.3s")
    finally:
        background.run(running.stop())

    assert status == 200
    events = [line for line in lines if line.startswith(b"data: ")]
    assert events == [b'data: {"n":1}', b'data: {"n":2}', b'data: {"n":3}']
    # Comments (ignored by every EventSource) fill the 0.3 s gaps; nothing else is in the stream.
    assert b": keep-alive" in lines[lines.index(events[0]) : lines.index(events[1])]
    assert set(lines) == {*events, b": keep-alive", b""}
    # NDJSON has no comment syntax: its streams get none.
    assert (quiet, len(ndjson)) == (200, 3)


def test_a_client_that_disconnects_cancels_the_upstream_stream(kitchen_gateway, kitchen, background):
    connection = http.client.HTTPConnection("127.0.0.1", kitchen_gateway.port, timeout=harness.WAIT)
    connection.request("GET", "/v1/count/1000?interval=0.05s")
    response = connection.getresponse()
    assert json.loads(response.readline()) == {"result": {"n": 1}}
    connection.sock.shutdown(2)
    connection.close()

    async def cancelled() -> None:
        await kitchen.cancelled.wait()

    background.run(cancelled())
    assert kitchen.cancelled.is_set()
