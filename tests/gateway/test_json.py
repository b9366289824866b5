"""The JSON clients send and get, through the route of an RPC taking and returning `AllTypes`.

`AllTypes` (the test contract) has every proto3 field type. The bridge reads
and writes it with protobuf's `json_format`, so these tests pin what clients
rely on rather than the mapping itself: the forms of input accepted, the shape
of the output, and that a refused value is a 400 naming its field path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from services.gateway import api as api_module
from services.gateway import routes, transcode


@pytest.fixture(scope="module")
def types_route(descriptor_set: Path) -> routes.Binding:
    """`POST /v1/types` with an `AllTypes` body, answering `AllTypes`: one more file in the test API."""
    files = list(descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file)
    contract = next(f for f in files if f.package == "gatewaytest.v1" and f.message_type)
    extra = descriptor_pb2.FileDescriptorProto(
        name="gatewaytest/v1/types.proto",
        package="gatewaytest.v1",
        syntax="proto3",
        dependency=[contract.name, "google/api/annotations.proto"],
    )
    method = extra.service.add(name="Types").method.add(
        name="Echo", input_type=".gatewaytest.v1.AllTypes", output_type=".gatewaytest.v1.AllTypes"
    )
    rule = method.options.Extensions[annotations_pb2.http]
    rule.post, rule.body = "/v1/types", "*"
    table = routes.build(api_module.from_file_protos([*files, extra]))
    match = table.match("POST", "/v1/types")
    assert match is not None
    return match.binding


def decode(binding: routes.Binding, body: Any) -> Any:
    """The request the body becomes, written back as the bridge writes responses."""
    return binding.encode(transcode.decode_request(binding, {}, "", json.dumps(body).encode()))


def test_output_is_proto3_json_with_defaults_written(types_route):
    encoded = decode(types_route, {"fString": "s", "fInt64": 5, "fEnum": "COLOR_BLUE"})
    fields = types_route.rpc.descriptor.output_type.fields
    assert {f.json_name for f in fields if not f.has_presence} <= set(encoded)
    assert (encoded["fInt64"], encoded["fString"], encoded["fEnum"]) == ("5", "s", "COLOR_BLUE")
    assert (encoded["rInt64"], encoded["mString"], encoded["fBool"], encoded["fDouble"]) == ([], {}, False, 0)
    assert not {"fMessage", "oInt32", "wTimestamp", "cString"} & set(encoded)  # unset: left out
    assert (encoded["customName"], encoded["from"], encoded["fNull"]) == ("", "", None)


DURATION = "type.googleapis.com/google.protobuf.Duration"
INNER = "type.googleapis.com/gatewaytest.v1.AllTypes.Inner"
ACCEPTED = [
    # both names, numbers as strings and with exponents, enums by number
    ({"f_int64": 5, "fInt32": "7", "fUint64": "1e3", "fDouble": "2.5"}, {"fInt64": "5", "fUint64": "1000"}),
    ({"fFloat": "NaN", "fDouble": "-Infinity", "rFloat": [1, "Infinity"]}, {"rFloat": [1.0, "Infinity"]}),
    (
        {"fEnum": 2, "rEnum": ["COLOR_RED", 7, "2"], "oEnum": "COLOR_UNSPECIFIED"},
        {"rEnum": ["COLOR_RED", 7, "COLOR_BLUE"]},
    ),
    # URL-safe base64, no padding
    ({"fBytes": "-_-_", "rBytes": ["aGk", "aGk="]}, {"fBytes": "+/+/", "rBytes": ["aGk=", "aGk="]}),
    (
        {"mBool": {"true": 1}, "mInt32": {"-3": "x"}, "mInt64": {"9": {"label": "l"}}},
        {"mInt64": {"9": {"label": "l"}}},
    ),
    (
        {"wInt64": "12", "wUint32": 3, "wBool": False, "wBytes": "aGk", "wString": ""},
        {"wInt64": "12", "wString": ""},
    ),
    (
        {"wStruct": {"a": [1, None, {"b": True}]}, "wValue": None, "wListValue": []},
        {"wStruct": {"a": [1, None, {"b": True}]}, "wValue": None, "wListValue": []},
    ),
    ({"wAny": {"@type": DURATION, "value": "1.5s"}}, {"wAny": {"@type": DURATION, "value": "1.500s"}}),
    ({"wAny": {"@type": INNER, "label": "x"}}, {"wAny": {"@type": INNER, "label": "x"}}),
    (
        {"wTimestamp": "2024-01-01T10:00:00+01:00", "wDuration": "-0.5s", "wFieldMask": "a.bC,d"},
        {"wTimestamp": "2024-01-01T09:00:00Z", "wFieldMask": "a.bC,d"},
    ),
    # null: not set (a Value gets null_value)
    (
        {"fInt32": None, "fMessage": None, "rInt64": None, "mString": None, "cString": None, "cEnum": 1},
        {"cEnum": "COLOR_RED"},
    ),
    (
        {"fMessage": {"next": {"next": {}}}, "rMessage": [{}, {"label": "a"}]},
        {"rMessage": [{"label": ""}, {"label": "a"}]},
    ),
]


@pytest.mark.parametrize(("body", "expected"), ACCEPTED)
def test_input_takes_every_form_of_the_proto3_json_mapping(types_route, body, expected):
    encoded = decode(types_route, body)
    assert {key: encoded.get(key, "(missing)") for key in expected} == expected


REFUSED = [
    ({"nope": 1}, "nope", "unknown field"),
    ({"fMessage": {"nope": 1}}, "fMessage.nope", "unknown field"),
    ({"fMessage": {"next": {"nope": 1}}}, "fMessage.next.nope", "unknown field"),
    ({"fInt32": "x"}, "fInt32", "'x'"),
    ({"fInt32": 1.5}, "fInt32", "integer"),
    ({"fInt32": True}, "fInt32", "integer"),
    ({"fInt32": 2**31}, "fInt32", "out of range"),
    ({"fUint32": -1}, "fUint32", "out of range"),
    ({"fInt64": "9223372036854775808"}, "fInt64", "out of range"),
    ({"fString": 5}, "fString", "string"),
    ({"fString": "\ud800"}, "fString", "surrogate"),
    ({"fBool": "true"}, "fBool", "true or false"),
    ({"fEnum": "COLOR_PURPLE"}, "fEnum", "COLOR_PURPLE"),
    ({"fFloat": 1e39}, "fFloat", "too large"),
    ({"fFloat": "nan"}, "fFloat", '"NaN"'),
    ({"fBytes": "a b"}, "fBytes", ""),
    ({"rInt64": 5}, "rInt64", "[]"),
    ({"rInt64": [1, None]}, "rInt64[1]", "null"),
    ({"rMessage": [None]}, "rMessage[0]", "null"),
    ({"rMessage": [{"label": 1}]}, "rMessage.label", "string"),  # json_format does not say the index
    ({"mString": []}, "mString", "dict"),
    ({"mInt32": {"x": "a"}}, "mInt32", "'x'"),
    ({"mBool": {"yes": 1}}, "mBool.key", "true"),
    ({"mInt64": {"1": {"label": 2}}}, "mInt64.label", "string"),
    ({"cString": "a", "cEnum": 1}, "choice", "more than one field of this oneof"),
    ({"wTimestamp": "yesterday"}, "wTimestamp", "timestamp"),
    ({"wTimestamp": 5}, "wTimestamp", "not a string"),
    ({"wDuration": "5"}, "wDuration", "Duration"),
    ({"wInt32": "x"}, "wInt32", "'x'"),
    ({"wAny": {"label": "x"}}, "wAny", "@type"),
    ({"wAny": {"@type": "type.googleapis.com/no.Such"}}, "wAny", "no.Such"),
    (
        {"wAny": {"@type": INNER, "label": 5}},
        "wAny.label",
        "string",
    ),
    ({"wStruct": [1]}, "wStruct", "dict"),
    ([1], "body", "expected a JSON object, got an array"),
]


@pytest.mark.parametrize(("body", "field", "problem"), REFUSED)
def test_bad_input_is_refused_naming_the_field(types_route, body, field, problem):
    with pytest.raises(transcode.BadRequest) as caught:
        decode(types_route, body)
    [violation] = caught.value.violations
    assert (violation.field, problem in violation.description) == (field, True), violation


def test_nesting_is_bounded(types_route):
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(150):
        cursor["next"] = {}
        cursor = cursor["next"]
    with pytest.raises(transcode.BadRequest) as caught:
        decode(types_route, {"fMessage": deep})
    [violation] = caught.value.violations
    assert violation.field.startswith("fMessage.next.next")
    assert "too deep" in violation.description
