"""The compiled JSON codec against `json_format`, the reference: same JSON out, same messages in.

Random messages of every field type (the test contract's `AllTypes`, and every
message of this project's contracts) are encoded by both; the codec's JSON is
parsed back by both. Then the inputs both must refuse, the inputs the codec
refuses on purpose where json_format is loose, and the paths errors name.
"""

from __future__ import annotations

import json
import math
import random
import string
from typing import Any

import pytest
from google.protobuf import any_pb2, descriptor_pool, json_format, struct_pb2, timestamp_pb2, wrappers_pb2
from google.protobuf import descriptor as d
from google.protobuf.message import Message

from services.gateway import api as api_module
from services.gateway.codec import Codec, DecodeError, EncodeError

FD = d.FieldDescriptor
SEED = 20261124
_INTS = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOATS = [0.0, 1.5, -2.25, 0.1, 1e-7, 123456.789, -0.0, math.inf, -math.inf, math.nan]
_DOUBLES = [*_FLOATS, 1e308, 5e-324, 2**53 + 1.0]
_TEXT = string.ascii_letters + string.digits + " _-/\\\"'\n\t\u00e9\u4e2d\U0001f600\u2028"


class Generator:
    """Random messages of any type, deterministic for a seed."""

    def __init__(self, pool: descriptor_pool.DescriptorPool, seed: int) -> None:
        self.rng = random.Random(seed)
        self.pool = pool
        self.codec = Codec(pool)
        try:
            self.inner: d.Descriptor | None = pool.FindMessageTypeByName("gatewaytest.v1.AllTypes.Inner")
        except KeyError:
            self.inner = None  # the project's contracts: Any holds well-known types only

    def message(self, descriptor: d.Descriptor, depth: int = 0) -> Message:
        message = self.codec.message_class(descriptor.full_name)()
        self.fill(message, descriptor, depth)
        return message

    def fill(self, message: Any, descriptor: d.Descriptor, depth: int) -> None:
        special = self.well_known(message, descriptor.full_name, depth)
        if special:
            return
        for field in descriptor.fields:
            if self.rng.random() < 0.35:
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                entry = field.message_type
                container = getattr(message, field.name)
                for _ in range(self.rng.randint(0, 3)):
                    key = self.scalar(entry.fields_by_name["key"])
                    value_field = entry.fields_by_name["value"]
                    if value_field.type == FD.TYPE_MESSAGE:
                        if depth < 3:
                            assert value_field.message_type is not None
                            self.fill(container[key], value_field.message_type, depth + 1)
                    else:
                        container[key] = self.scalar(value_field)
            elif field.is_repeated:
                container = getattr(message, field.name)
                for _ in range(self.rng.randint(0, 3)):
                    if field.type == FD.TYPE_MESSAGE:
                        if depth < 3:
                            assert field.message_type is not None
                            self.fill(container.add(), field.message_type, depth + 1)
                    else:
                        container.append(self.scalar(field))
            elif field.type == FD.TYPE_MESSAGE:
                if depth < 3:
                    assert field.message_type is not None
                    sub = getattr(message, field.name)
                    sub.SetInParent()
                    self.fill(sub, field.message_type, depth + 1)
            else:
                setattr(message, field.name, self.scalar(field))

    def scalar(self, field: d.FieldDescriptor) -> Any:
        rng = self.rng
        kind = field.type
        if kind in _INTS:
            low, high = _INTS[kind]
            return rng.choice([0, 1, low, high, rng.randint(low, high), max(low, -5)])
        if kind == FD.TYPE_FLOAT:
            return rng.choice(_FLOATS)
        if kind == FD.TYPE_DOUBLE:
            return rng.choice(_DOUBLES)
        if kind == FD.TYPE_BOOL:
            return rng.random() < 0.5
        if kind == FD.TYPE_STRING:
            return "".join(rng.choice(_TEXT) for _ in range(rng.randint(0, 12)))
        if kind == FD.TYPE_BYTES:
            return bytes(rng.randrange(256) for _ in range(rng.randint(0, 9)))
        if kind == FD.TYPE_ENUM:
            assert field.enum_type is not None
            numbers = [v.number for v in field.enum_type.values]
            return rng.choice(
                [*numbers, 7] if field.enum_type.full_name != "google.protobuf.NullValue" else numbers
            )
        raise AssertionError(field.full_name)

    def json_value(self, depth: int) -> Any:
        rng = self.rng
        choice = rng.randrange(7 if depth < 2 else 4)
        if choice == 0:
            return None
        if choice == 1:
            return rng.random() < 0.5
        if choice == 2:
            return rng.choice([0, 1.5, -3, 1e20])
        if choice == 3:
            return "".join(rng.choice(_TEXT) for _ in range(rng.randint(0, 5)))
        if choice == 4:
            return [self.json_value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {f"k{i}": self.json_value(depth + 1) for i in range(rng.randint(0, 3))}

    def well_known(self, message: Any, full_name: str, depth: int) -> bool:
        rng = self.rng
        if full_name == "google.protobuf.Timestamp":
            message.seconds = rng.randint(-62135596800, 253402300799)
            message.nanos = rng.choice([0, 5_000_000, 123_000, 1, 999_999_999])
        elif full_name == "google.protobuf.Duration":
            seconds = rng.randint(-315576000000, 315576000000)
            nanos = rng.choice([0, 5_000_000, 123_000, 1, 999_999_999])
            message.seconds, message.nanos = seconds, (nanos if seconds >= 0 else -nanos)
        elif full_name == "google.protobuf.FieldMask":
            message.paths.extend(rng.sample(["a", "display_name", "a.b_c", "vehicle.license_plate"], 2))
        elif full_name == "google.protobuf.Struct":
            json_format.ParseDict({"a": self.json_value(1)}, message)
        elif full_name == "google.protobuf.Value":
            json_format.ParseDict(self.json_value(0), message)
        elif full_name == "google.protobuf.ListValue":
            json_format.ParseDict([self.json_value(1) for _ in range(rng.randint(0, 3))], message)
        elif full_name == "google.protobuf.Any":
            packed: Message = rng.choice(
                [
                    timestamp_pb2.Timestamp(seconds=rng.randint(0, 2**31)),
                    wrappers_pb2.Int64Value(value=rng.randint(-(2**63), 2**63 - 1)),
                    wrappers_pb2.StringValue(value="x"),
                    struct_pb2.Value(string_value="v"),
                    any_pb2.Any(),
                ]
            )
            if self.inner is not None and depth < 2 and rng.random() < 0.5:
                packed = self.message(self.inner, 2)
            message.Pack(packed)
        else:
            return False
        return True


def reference(message: Message, pool: descriptor_pool.DescriptorPool) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True, descriptor_pool=pool)


def same_message(a: Message, b: Message, pool: descriptor_pool.DescriptorPool) -> bool:
    """Equal field by field; NaN equals NaN (compared through the reference JSON)."""
    return reference(a, pool) == reference(b, pool) and (a == b or _has_nan(reference(a, pool)))


def _has_nan(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return value == "NaN"


@pytest.fixture(scope="module")
def all_types(test_api: api_module.Api) -> d.Descriptor:
    return test_api.pool.FindMessageTypeByName("gatewaytest.v1.AllTypes")


def messages_of(pool: descriptor_pool.DescriptorPool, descriptors: list[d.Descriptor], count: int, seed: int):
    generator = Generator(pool, seed)
    for descriptor in descriptors:
        for _ in range(count):
            yield descriptor, generator.message(descriptor)


def round_trip(
    codec: Codec, pool: descriptor_pool.DescriptorPool, descriptor: d.Descriptor, message: Message
):
    encoded = codec.to_json(message)
    assert encoded == reference(message, pool), descriptor.full_name
    text = json.dumps(encoded)
    cls = codec.message_class(descriptor.full_name)
    decoded = codec.from_json(json.loads(text), cls())
    assert same_message(decoded, message, pool), (descriptor.full_name, text)
    parsed = json_format.Parse(text, cls(), descriptor_pool=pool)
    assert same_message(decoded, parsed, pool), (descriptor.full_name, text)
    return encoded


def test_every_field_type_encodes_like_json_format_and_decodes_back(test_api, all_types):
    codec = Codec(test_api.pool)
    seen: set[str] = set()
    for descriptor, message in messages_of(test_api.pool, [all_types], 400, SEED):
        encoded = round_trip(codec, test_api.pool, descriptor, message)
        seen.update(k for k, v in encoded.items() if v not in ("", 0, [], {}, False, "0"))
    never = {f.json_name for f in all_types.fields} - seen
    assert never <= {"fNull", "wEmpty"}, never


def test_every_message_of_the_contracts_encodes_like_json_format_and_decodes_back():
    project = api_module.from_generated()
    descriptors = []
    for proto in project.files.values():
        if proto.package.startswith("rideshare."):
            for message in proto.message_type:
                descriptors.append(project.pool.FindMessageTypeByName(f"{proto.package}.{message.name}"))
    assert len(descriptors) > 40
    codec = Codec(project.pool)
    for descriptor, message in messages_of(project.pool, descriptors, 25, SEED):
        round_trip(codec, project.pool, descriptor, message)


def test_keys_come_in_declaration_order_and_defaults_are_written(test_api, all_types):
    codec = Codec(test_api.pool)
    message = codec.message_class(all_types.full_name)(f_string="s", f_int64=5)
    encoded = codec.to_json(message)
    names = [f.json_name for f in all_types.fields if not f.has_presence]
    assert [k for k in encoded if k in names] == names
    assert (encoded["fInt64"], encoded["fString"], encoded["rInt64"], encoded["mString"]) == (
        "5",
        "s",
        [],
        {},
    )
    assert not {"fMessage", "oInt32", "wTimestamp"} & set(encoded)
    assert (encoded["customName"], encoded["from"], encoded["fNull"]) == ("", "", None)


ACCEPTED = [
    # both names, numbers as strings and with exponents, enums by number
    ({"f_int64": 5, "fInt32": "7", "fUint64": "1e3", "fDouble": "2.5"}, {"fInt64": "5", "fInt32": 7}),
    ({"fFloat": "NaN", "fDouble": "-Infinity", "rFloat": [1, "Infinity"]}, {"fFloat": "NaN"}),
    ({"fEnum": 2, "rEnum": ["COLOR_RED", 7, "2"], "oEnum": "COLOR_UNSPECIFIED"}, {"fEnum": "COLOR_BLUE"}),
    # URL-safe base64, no padding
    ({"fBytes": "-_-_", "rBytes": ["aGk", "aGk="]}, {"fBytes": "+/+/", "rBytes": ["aGk=", "aGk="]}),
    ({"mBool": {"true": 1}, "mInt32": {"-3": "x"}, "mInt64": {"9": {"label": "l"}}}, {"mInt32": {"-3": "x"}}),
    ({"wInt64": "12", "wUint32": 3, "wBool": False, "wBytes": "aGk", "wString": ""}, {"wInt64": "12"}),
    ({"wStruct": {"a": [1, None, {"b": True}]}, "wValue": None, "wListValue": []}, {"wValue": None}),
    ({"wAny": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "1.5s"}}, {}),
    ({"wAny": {"@type": "type.googleapis.com/gatewaytest.v1.AllTypes.Inner", "label": "x"}}, {}),
    ({"wTimestamp": "2024-01-01T10:00:00+01:00", "wDuration": "-0.5s", "wFieldMask": "a.bC,d"}, {}),
    # null: not set (a Value gets null_value)
    ({"fInt32": None, "fMessage": None, "rInt64": None, "mString": None, "cString": None, "cEnum": 1}, {}),
    ({"fMessage": {"next": {"next": {}}}, "rMessage": [{}, {"label": "a"}]}, {"rMessage": [{"label": ""}]}),
]


@pytest.mark.parametrize(("value", "expected"), ACCEPTED)
def test_input_is_read_like_json_format(test_api, all_types, value, expected):
    codec = Codec(test_api.pool)
    cls = codec.message_class(all_types.full_name)
    decoded = codec.from_json(value, cls())
    reference_message = json_format.ParseDict(value, cls(), descriptor_pool=test_api.pool)
    assert same_message(decoded, reference_message, test_api.pool)
    encoded = codec.to_json(decoded)
    for key, want in expected.items():
        assert encoded[key] == want or (key == "rMessage" and encoded[key][0] == want[0])


REFUSED_BY_BOTH = [
    ({"nope": 1}, "nope", "unknown field"),
    ({"fMessage": {"nope": 1}}, "fMessage.nope", "unknown field"),
    ({"fInt32": "x"}, "fInt32", "'x'"),
    ({"fInt32": 1.5}, "fInt32", "integer"),
    ({"fInt32": True}, "fInt32", "integer"),
    ({"fInt32": 2**31}, "fInt32", "out of range"),
    ({"fUint32": -1}, "fUint32", "out of range"),
    ({"fInt64": "9223372036854775808"}, "fInt64", "out of range"),
    ({"fString": 5}, "fString", "a string"),
    ({"fBool": "true"}, "fBool", "true or false"),
    ({"fEnum": "COLOR_PURPLE"}, "fEnum", "COLOR_PURPLE"),
    ({"fFloat": 1e39}, "fFloat", "out of range"),
    ({"fFloat": "nan"}, "fFloat", "number"),
    ({"rInt64": 5}, "rInt64", "a JSON array"),
    ({"rInt64": [1, None]}, "rInt64[1]", "null"),
    ({"rMessage": [{"label": 1}]}, "rMessage[0].label", "a string"),
    ({"rMessage": [None]}, "rMessage[0]", "null"),
    ({"mString": []}, "mString", "a JSON object"),
    ({"mInt32": {"x": "a"}}, "mInt32['x']", "integer"),
    ({"mBool": {"yes": 1}}, "mBool['yes']", "true"),
    ({"mString": {"a": "b"}}, "mString['a']", "integer"),
    ({"mInt64": {"1": {"label": 2}}}, "mInt64['1'].label", "a string"),
    ({"cString": "a", "cEnum": 1}, "cEnum", "oneof"),
    ({"fMessage": "x"}, "fMessage", "a JSON object"),
    ({"wTimestamp": "yesterday"}, "wTimestamp", "timestamp"),
    ({"wTimestamp": 5}, "wTimestamp", "timestamp"),
    ({"wDuration": "5"}, "wDuration", "duration"),
    ({"wInt32": "x"}, "wInt32", "integer"),
    ({"wAny": {"label": "x"}}, "wAny", "@type"),
    ({"wAny": {"@type": "type.googleapis.com/no.Such"}}, "wAny.@type", "unknown message type"),
    ({"wStruct": [1]}, "wStruct", "a JSON object"),
    ({"fString": "\ud800"}, "fString", "surrogate"),
    ({"fBytes": "a b"}, "fBytes", "base64"),
]


@pytest.mark.parametrize(("value", "field", "problem"), REFUSED_BY_BOTH)
def test_bad_input_is_refused_naming_the_value(test_api, all_types, value, field, problem):
    codec = Codec(test_api.pool)
    cls = codec.message_class(all_types.full_name)
    with pytest.raises(DecodeError) as caught:
        codec.from_json(value, cls())
    assert caught.value.field() == field
    assert problem in caught.value.description
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(value, cls(), descriptor_pool=test_api.pool)


# json_format takes these by accident (Python's int()/float()/base64 leniency); the codec refuses them.
STRICTER = [
    {"fDouble": False},
    {"fInt32": "\t1"},
    {"fInt32": "1_000"},
    {"fInt64": "\u0661"},
    {"fDouble": " 2.5 "},
    {"fEnum": 1.5},
    {"fEnum": True},
    {"fBytes": "aGk*"},
    {"fString": "a", "f_string": "b"},
]


@pytest.mark.parametrize("value", STRICTER)
def test_input_json_format_takes_by_accident_is_refused(test_api, all_types, value):
    codec = Codec(test_api.pool)
    cls = codec.message_class(all_types.full_name)
    json_format.ParseDict(value, cls(), descriptor_pool=test_api.pool)
    with pytest.raises(DecodeError):
        codec.from_json(value, cls())


def test_nesting_is_bounded(test_api, all_types):
    codec = Codec(test_api.pool)
    cls = codec.message_class(all_types.full_name)
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(150):
        cursor["next"] = {}
        cursor = cursor["next"]
    with pytest.raises(DecodeError) as caught:
        codec.from_json({"fMessage": deep}, cls())
    assert "nested" in caught.value.description


def test_messages_without_a_json_form_raise_encode_error(test_api, all_types):
    codec = Codec(test_api.pool)
    message = codec.message_class(all_types.full_name)()
    message.w_value.number_value = math.inf
    with pytest.raises(EncodeError):
        codec.to_json(message)
    with pytest.raises(json_format.SerializeToJsonError):
        reference(message, test_api.pool)
