"""Transcoding without a server: HTTP method + URL + body -> which RPC, with which request.

Each case is one HTTP request on the test contract (tests/gateway/protos) and
the gRPC request it must become, written as proto-name JSON. The first cases
are the six examples in the comments of google/api/http.proto.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from google.protobuf import json_format

from services.gateway import routes, transcode

KITCHEN = "/gatewaytest.v1.Kitchen/"


def call(table: routes.RouteTable, method: str, url: str, body: object = None):
    """The RPC path and the request (proto names, defaults left out) for one HTTP request."""
    parts = urlsplit(url)
    match = table.match(method, parts.path)
    assert match is not None, f"no route for {method} {url}"
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    request = transcode.decode_request(match.binding, match.values, parts.query, raw)
    return match.binding.rpc.path, json_format.MessageToDict(request, preserving_proto_field_name=True)


HTTP_PROTO_EXAMPLES = [
    # 1. a path variable with a pattern
    (
        "GET",
        "/ex1/v1/messages/123456",
        None,
        "/gatewaytest.v1.ExampleOne/GetMessage",
        {"name": "messages/123456"},
    ),
    # 2. fields not in the path are query parameters, nested ones too
    (
        "GET",
        "/ex2/v1/messages/123456?revision=2&sub.subfield=foo",
        None,
        "/gatewaytest.v1.ExampleTwo/GetMessage",
        {"message_id": "123456", "revision": "2", "sub": {"subfield": "foo"}},
    ),
    # 3. the body is one field
    (
        "PATCH",
        "/ex3/v1/messages/123456",
        {"text": "Hi!"},
        "/gatewaytest.v1.ExampleThree/UpdateMessage",
        {"message_id": "123456", "message": {"text": "Hi!"}},
    ),
    # 4. the body is every field not in the path
    (
        "PATCH",
        "/ex4/v1/messages/123456",
        {"text": "Hi!"},
        "/gatewaytest.v1.ExampleFour/UpdateMessage",
        {"message_id": "123456", "text": "Hi!"},
    ),
    # 5. additional bindings: two routes to one method
    (
        "GET",
        "/ex5/v1/messages/123456",
        None,
        "/gatewaytest.v1.ExampleFive/GetMessage",
        {"message_id": "123456"},
    ),
    (
        "GET",
        "/ex5/v1/users/me/messages/123456",
        None,
        "/gatewaytest.v1.ExampleFive/GetMessage",
        {"message_id": "123456", "user_id": "me"},
    ),
    # 6. a nested field in the path
    (
        "GET",
        "/ex6/v1/messages/123456/foo",
        None,
        "/gatewaytest.v1.ExampleSix/GetMessage",
        {"message_id": "123456", "sub": {"subfield": "foo"}},
    ),
]


@pytest.mark.parametrize(("method", "url", "body", "rpc", "request_json"), HTTP_PROTO_EXAMPLES)
def test_the_examples_of_http_proto(table, method, url, body, rpc, request_json):
    assert call(table, method, url, body) == (rpc, request_json)


QUERY_CASES = [
    ("int32_value=-5", {"int32_value": -5}),
    ("int32Value=7", {"int32_value": 7}),
    ("int64_value=9007199254740993", {"int64_value": "9007199254740993"}),
    ("uint64_value=18446744073709551615", {"uint64_value": "18446744073709551615"}),
    ("double_value=1.5&float_value=-2.5", {"double_value": 1.5, "float_value": -2.5}),
    ("double_value=NaN", {"double_value": "NaN"}),
    ("bool_value=true", {"bool_value": True}),
    ("boolValue=1", {"bool_value": True}),
    ("bool_value=false&int32_value=0", {}),
    ("bytes_value=aGk", {"bytes_value": "aGk="}),
    ("bytes_value=-_8%3D", {"bytes_value": "+/8="}),
    ("bytes_value=+/8=", {"bytes_value": "+/8="}),
    ("color=COLOR_RED", {"color": "COLOR_RED"}),
    ("color=2", {"color": "COLOR_BLUE"}),
    ("colors=1&colors=COLOR_BLUE&colors=0", {"colors": ["COLOR_RED", "COLOR_BLUE", "COLOR_UNSPECIFIED"]}),
    ("tags=a&tags=b&tags=", {"tags": ["a", "b", ""]}),
    ("numbers=3&numbers=-1", {"numbers": [3, -1]}),
    ("tags=a+b%2Bc%20d", {"tags": ["a b+c d"]}),
    (
        "nested.label=x&nested.child.child.depth=3",
        {"nested": {"label": "x", "child": {"child": {"depth": 3}}}},
    ),
    ("nested.child.label=deep", {"nested": {"child": {"label": "deep"}}}),
    ("when=2024-01-02T03:04:05.5Z", {"when": "2024-01-02T03:04:05.500Z"}),
    ("when=2024-01-02T05:04:05%2B02:00", {"when": "2024-01-02T03:04:05Z"}),
    ("wait=1.5s", {"wait": "1.500s"}),
    # (a FieldMask's JSON form is lowerCamel: "displayName" below is the path display_name)
    ("mask=displayName,place.city", {"mask": "displayName,place.city"}),
    ("mask=display_name", {"mask": "displayName"}),
    ("maybe_int=7&maybeString=x", {"maybe_int": 7, "maybe_string": "x"}),
    ("maybe_int=0", {"maybe_int": 0}),
    ("left=l", {"left": "l"}),
    ("note=", {"note": ""}),
    # unknown keys, and the bridge's own keys, are ignored
    ("utm_source=x&nested.nope=1&int32_value.x=2&key=k&timeout=1s", {}),
    # the path binds id: a query id is ignored
    ("id=other", {}),
]


@pytest.mark.parametrize(("query", "fields"), QUERY_CASES)
def test_query_parameters_set_every_kind_of_field(table, query, fields):
    rpc, request = call(table, "GET", f"/v1/echo/e1?{query}")

    assert rpc == KITCHEN + "Echo"
    assert request == {"id": "e1", **fields}


BAD_QUERIES = [
    ("int32_value=abc", "int32_value", "expected an integer"),
    ("int32_value=99999999999", "int32_value", "out of range"),
    ("uint64_value=-1", "uint64_value", "out of range"),
    ("int32_value=1&int32Value=2", "int32Value", "given more than once"),
    ("nested.label=a&nested.label=b", "nested.label", "given more than once"),
    ("color=COLOR_PURPLE", "color", "expected one of COLOR_UNSPECIFIED, COLOR_RED, COLOR_BLUE"),
    ("bool_value=maybe", "bool_value", "expected true or false"),
    ("double_value=1e999", "double_value", "expected a number"),
    ("bytes_value=!!", "bytes_value", "base64"),
    ("when=yesterday", "when", "Timestamp"),
    ("wait=forever", "wait", "Duration"),
    ("maybe_int=x", "maybe_int", "expected an integer"),
    ("items.label=x", "items.label", "not a singular message"),
    ("labels=x", "labels", "map fields"),
    ("nested=x", "nested", "cannot be set from the URL"),
    ("left=a&right=b", "right", "left of the same oneof is already set"),
]


@pytest.mark.parametrize(("query", "field", "problem"), BAD_QUERIES)
def test_bad_query_parameters_are_refused_naming_the_parameter(table, query, field, problem):
    with pytest.raises(transcode.BadRequest) as caught:
        call(table, "GET", f"/v1/echo/e1?{query}")

    [violation] = caught.value.violations
    assert violation.field == field
    assert problem in violation.description


def test_every_bad_query_parameter_is_reported_at_once(table):
    with pytest.raises(transcode.BadRequest) as caught:
        call(table, "GET", "/v1/echo/e1?int32_value=x&bool_value=y&tags=fine")

    assert [v.field for v in caught.value.violations] == ["int32_value", "bool_value"]


BODY_CASES = [
    # body "*": every field from the body, no query parameters
    ("POST", "/v1/echo?int32_value=3", {"id": "a", "int64Value": "5"}, {"id": "a", "int64_value": "5"}),
    (
        "POST",
        "/v1/echo",
        {"int32_value": 1, "colors": ["COLOR_RED", 2]},
        {"int32_value": 1, "colors": ["COLOR_RED", "COLOR_BLUE"]},
    ),
    ("POST", "/v1/echo", b"", {}),
    ("POST", "/v1/echo", b"  \n", {}),
    # body "nested": the path and the query set the rest; query keys under the body field are ignored
    (
        "PUT",
        "/v1/echo/7/nested?tags=a&nested.label=ignored",
        {"label": "x", "child": {"depth": 2}},
        {"id": "7", "tags": ["a"], "nested": {"label": "x", "child": {"depth": 2}}},
    ),
    # a repeated body field takes a JSON array
    ("POST", "/v1/echo/7/tags", ["a", "b"], {"id": "7", "tags": ["a", "b"]}),
]


@pytest.mark.parametrize(("method", "url", "body", "request_json"), BODY_CASES)
def test_the_body_fills_what_the_binding_says(table, method, url, body, request_json):
    assert call(table, method, url, body) == (KITCHEN + "Echo", request_json)


def test_a_path_value_overrides_the_same_field_in_the_body(table):
    _, request = call(table, "PATCH", "/ex4/v1/messages/123", {"messageId": "999", "text": "x"})

    assert request == {"message_id": "123", "text": "x"}


BAD_BODIES = [
    ("POST", "/v1/echo", b"{", "body", "malformed JSON"),
    ("POST", "/v1/echo", b"\xff\xfe", "body", "UTF-8"),
    ("POST", "/v1/echo", [1], "body", "expected a JSON object"),
    ("POST", "/v1/echo", {"nope": 1}, "nope", "unknown field"),
    ("POST", "/v1/echo", {"nested": {"nope": 1}}, "nested.nope", "unknown field"),
    ("POST", "/v1/echo", {"int32Value": "x"}, "int32Value", "'x'"),
    ("POST", "/v1/echo", {"nested": {"depth": []}}, "nested.depth", ""),
    ("POST", "/v1/echo", {"when": "yesterday"}, "when", "timestamp"),
    ("POST", "/v1/echo", {"color": "COLOR_PURPLE"}, "color", "COLOR_PURPLE"),
    ("PUT", "/v1/echo/7/nested", "text", "nested", "expected a JSON object"),
    ("POST", "/v1/echo/7/tags", {"a": 1}, "tags", "must be in []"),
]


@pytest.mark.parametrize(("method", "url", "body", "field", "problem"), BAD_BODIES)
def test_bad_bodies_are_refused_naming_the_field(table, method, url, body, field, problem):
    with pytest.raises(transcode.BadRequest) as caught:
        call(table, method, url, body)

    [violation] = caught.value.violations
    assert violation.field == field
    assert problem in violation.description


PATH_CASES = [
    # a single-segment variable decodes everything; '+' stays '+'
    ("GET", "/v1/echo/a%2Fb%20c+d", "Echo", {"id": "a/b c+d"}),
    ("GET", "/v1/echo/caf%C3%A9", "Echo", {"id": "café"}),
    # a multi-segment variable decodes everything but %2F
    ("GET", "/v1/things/x%2Fy%41", "GetThing", {"name": "things/x%2FyA"}),
    ("GET", "/v1/files/a/b%2Fc/d%20e", "GetFile", {"name": "files/a/b%2Fc/d e"}),
    # ** matches zero or more segments
    ("GET", "/v1/files", "GetFile", {"name": "files"}),
    ("GET", "/v1/files/a/b/c", "GetFile", {"name": "files/a/b/c"}),
    ("GET", "/v1/files/a/b:content", "GetFile", {"name": "files/a/b"}),
    # literal routes win over wildcard routes
    ("GET", "/v1/things/special", "GetSpecialThing", {}),
    ("GET", "/v1/things/specials", "GetThing", {"name": "things/specials"}),
    # a verb, and a colon that is no verb
    ("POST", "/v1/things/t1:archive", "ArchiveThing", {"name": "things/t1"}),
    ("GET", "/v1/things/t1:archive", "GetThing", {"name": "things/t1:archive"}),
    # a custom HTTP method
    ("HEAD", "/v1/probe", "Probe", {}),
    # a method without an http rule
    ("POST", "/gatewaytest.v1.Kitchen/Plain", "Plain", {}),
    # a path variable of another type than string
    ("GET", "/v1/count/12", "Count", {"count": 12}),
]


@pytest.mark.parametrize(("method", "path", "rpc", "request_json"), PATH_CASES)
def test_paths_pick_the_route_and_decode_the_variables(table, method, path, rpc, request_json):
    assert call(table, method, path) == (KITCHEN + rpc, request_json)


def test_a_method_without_an_http_rule_takes_the_whole_request_as_body(table):
    assert call(table, "POST", "/gatewaytest.v1.Kitchen/Plain", {"id": "p", "tags": ["x"]}) == (
        KITCHEN + "Plain",
        {"id": "p", "tags": ["x"]},
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nothing"),
        ("GET", "/v1/things/"),
        ("GET", "/v1/things/a/b"),
        ("GET", "v1/things/a"),
        ("GET", "/v1/things/a:unknownverb:x/y"),
        ("POST", "/gatewaytest.v1.Kitchen/Echo"),
        ("DELETE", "/v1/things/a"),
    ],
)
def test_paths_without_a_route_do_not_match(table, method, path):
    assert table.match(method, path) is None


def test_allowed_lists_the_methods_a_path_has_routes_for(table):
    assert table.allowed("/v1/echo/1") == ["GET"]
    assert table.allowed("/v1/things/t:archive") == ["GET", "PATCH", "POST"]
    assert table.allowed("/v1/nothing") == []


def test_a_bad_path_value_is_refused_naming_the_field(table):
    with pytest.raises(transcode.BadRequest) as caught:
        call(table, "GET", "/v1/count/many")

    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("count", "expected an integer, got 'many'")
    ]


PATCH_CASES = [
    ("", {"title": "t"}, ["title"]),
    ("", {"title": "t", "place": {"city": "Paris"}, "size": "3"}, ["title", "place.city", "size"]),
    ("", {"createTime": "2024-01-01T00:00:00Z", "place": {}}, ["createTime", "place"]),
    ("?update_mask=title", {"title": "t", "size": "3"}, ["title"]),
    ("?updateMask=size,place.city,create_time", {"title": "t"}, ["size", "place.city", "createTime"]),
    ("", {}, []),
]


@pytest.mark.parametrize(("query", "body", "mask"), PATCH_CASES)
def test_a_patch_without_a_mask_gets_the_fields_of_the_body(table, query, body, mask):
    rpc, request = call(table, "PATCH", f"/v1/things/t1{query}", body)

    assert rpc == KITCHEN + "UpdateThing"
    assert request["thing"]["name"] == "things/t1"
    assert request.get("update_mask", "").split(",") == (mask or [""])


def test_responses_are_proto3_json_and_response_body_picks_one_field(test_api, table):
    thing_class = test_api.message_class(test_api.pool.FindMessageTypeByName("gatewaytest.v1.Thing"))
    thing = thing_class(name="things/a", size=2**60, color=2)
    get = table.match("GET", "/v1/things/a")
    assert get is not None
    assert get.binding.encode(thing) == {
        "name": "things/a",
        "title": "",
        "size": str(2**60),
        "color": "COLOR_BLUE",
    }

    file_class = test_api.message_class(test_api.pool.FindMessageTypeByName("gatewaytest.v1.File"))
    content = table.match("GET", "/v1/files/a:content")
    assert content is not None
    assert content.binding.encode(file_class(name="files/a", content=b"hi")) == "aGk="
