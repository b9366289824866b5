"""JSON values <-> field values: the scalar rules of the proto3 JSON mapping, and the
well-known types whose JSON form is not an object of their fields.

Used by `codec.py`, which compiles these per field; kept apart so the rules
for one value can be read (and tested) on their own. Decoding raises
`DecodeError` with a description of what was expected; the codec adds the
path of the value.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor as d
from google.protobuf.internal import type_checkers

FD = d.FieldDescriptor
#: Merges a JSON value into a message (`depth`: message nesting so far).
Decoder = Callable[[Any, Any, int], None]

MAX_DEPTH = 100
"""Nested messages allowed in input (json_format's default)."""

INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}
INT64 = frozenset({FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64, FD.TYPE_UINT64, FD.TYPE_FIXED64})
_FLOAT32_MAX = 3.4028234663852886e38
DOUBLE_MAX = 1.7976931348623157e308
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BASE64 = re.compile(r"[A-Za-z0-9+/\-_]*")
_URLSAFE = str.maketrans("-_", "+/")
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

WRAPPERS = frozenset(
    {
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)
#: Messages whose JSON form is a string (their `ToJsonString` / `FromJsonString`).
STRING_FORMS = {
    "google.protobuf.Timestamp": "an RFC 3339 timestamp (e.g. 2024-01-01T00:00:00Z)",
    "google.protobuf.Duration": "a duration in seconds (e.g. 1.5s)",
    "google.protobuf.FieldMask": "a field mask (comma-separated lowerCamel paths)",
}
STRUCTURED = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})
ANY = "google.protobuf.Any"
#: Types an Any holds under "value" rather than as fields next to "@type".
SPECIAL_IN_ANY = WRAPPERS | STRUCTURED | set(STRING_FORMS) | {ANY}
NULL_VALUE = "google.protobuf.NullValue"


class EncodeError(ValueError):
    """A message that has no JSON form (a NaN in a `Value`, a closed enum with an unknown number)."""


class DecodeError(ValueError):
    """A JSON value that does not fit; `path` leads to it from the decoded message."""

    def __init__(self, description: str, path: list[str] | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.path = path if path is not None else []

    def field(self, prefix: str = "") -> str:
        """The path as text, `a.b[2].c`, after `prefix` ('' gives `body` for the top level)."""
        text = prefix
        for part in self.path:
            text += part if part.startswith("[") or not text else "." + part
        return text or "body"


def wrong(expected: str, value: Any) -> DecodeError:
    return DecodeError(f"expected {expected}, got {show(value)}")


def show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- scalar conversions: JSON value -> what the field holds --------------------------------------------


def _integer(value: Any, low: int, high: int) -> int:
    kind = type(value)
    number: int
    if kind is int:
        number = value
    elif kind is str and _INTEGER.fullmatch(value):
        number = int(value)
    elif (kind is float or (kind is str and _NUMBER.fullmatch(value))) and float(value).is_integer():
        number = int(float(value))
    else:
        raise wrong("an integer", value)
    if not low <= number <= high:
        raise DecodeError(f"{number} is out of range ({low} to {high})")
    return number


def integer_of(kind: int) -> Callable[[Any], int]:
    low, high = INT_RANGES[kind]

    def convert(value: Any) -> int:
        if type(value) is int and low <= value <= high:
            number: int = value
            return number
        return _integer(value, low, high)

    return convert


def float_of(single: bool) -> Callable[[Any], float]:
    limit = _FLOAT32_MAX if single else DOUBLE_MAX

    def convert(value: Any) -> float:
        kind = type(value)
        if kind is float or kind is int:
            number = float(value)
            if not -limit <= number <= limit:  # also NaN and the infinities, which JSON cannot write bare
                raise DecodeError(f'{show(value)} is out of range (use "NaN", "Infinity", "-Infinity")')
            return number
        if kind is str:
            special = _SPECIAL_FLOATS.get(value)
            if special is not None:
                return special
            if _NUMBER.fullmatch(value):
                number = float(value)
                if -limit <= number <= limit:
                    return number
                raise DecodeError(f"{show(value)} is out of range")
        raise wrong("a number", value)

    return convert


def _bool(value: Any) -> bool:
    if value is True or value is False:
        return value
    raise wrong("true or false", value)


def string(value: Any) -> str:
    if type(value) is str:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise DecodeError("contains an unpaired surrogate") from None
        return value
    raise wrong("a string", value)


def _bytes(value: Any) -> bytes:
    if type(value) is str:
        text = value.rstrip("=")
        if _BASE64.fullmatch(text) and len(value) - len(text) <= 2:
            try:
                return base64.b64decode(text.translate(_URLSAFE) + "=" * (-len(text) % 4), validate=True)
            except (binascii.Error, ValueError):
                pass
        raise DecodeError("expected base64 (standard or URL-safe)")
    raise wrong("a base64 string", value)


def _enum_of(enum: d.EnumDescriptor) -> Callable[[Any], int]:
    names = {v.name: v.number for v in enum.values}
    numbers = frozenset(v.number for v in enum.values)
    closed = bool(getattr(enum, "is_closed", False))
    low, high = INT_RANGES[FD.TYPE_ENUM]

    def convert(value: Any) -> int:
        kind = type(value)
        if kind is str:
            number = names.get(value)
            if number is not None:
                return number
            if not _INTEGER.fullmatch(value):
                raise DecodeError(f"{show(value)} is not a value of {enum.full_name}")
            value = int(value)
        elif kind is not int:
            raise wrong(f"a name of {enum.full_name} or a number", value)
        if not low <= value <= high or (closed and value not in numbers):
            raise DecodeError(f"{value} is not a value of {enum.full_name}")
        result: int = value
        return result

    return convert


def scalar(field: d.FieldDescriptor) -> Callable[[Any], Any]:
    kind = field.type
    if kind in INT_RANGES and kind != FD.TYPE_ENUM:
        return integer_of(kind)
    if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return float_of(kind == FD.TYPE_FLOAT)
    if kind == FD.TYPE_BOOL:
        return _bool
    if kind == FD.TYPE_STRING:
        return string
    if kind == FD.TYPE_BYTES:
        return _bytes
    if kind == FD.TYPE_ENUM:
        assert field.enum_type is not None
        return _enum_of(field.enum_type)
    raise TypeError(f"{field.full_name} is not a scalar field")


def map_key(field: d.FieldDescriptor) -> Callable[[str], Any]:
    kind = field.type
    if kind == FD.TYPE_BOOL:

        def boolean(key: str) -> bool:
            if key == "true":
                return True
            if key == "false":
                return False
            raise DecodeError(f'expected "true" or "false" as the key, got {show(key)}')

        return boolean
    if kind in INT_RANGES:
        return integer_of(kind)
    return string


# -- encoders of the well-known types ----------------------------------------------------------------


def f64(value: float) -> Any:
    if -DOUBLE_MAX <= value <= DOUBLE_MAX:
        return value
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def f32(value: float) -> Any:
    if -DOUBLE_MAX <= value <= DOUBLE_MAX:
        return type_checkers.ToShortestFloat(value)
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def b64(value: bytes) -> str:
    return binascii.b2a_base64(value, newline=False).decode("ascii")


def json_string(message: Any) -> str:
    text: str = message.ToJsonString()
    return text


def encode_value(message: Any) -> Any:
    which = message.WhichOneof("kind")
    if which is None or which == "null_value":
        return None
    if which == "number_value":
        number = message.number_value
        if math.isinf(number) or math.isnan(number):
            raise EncodeError(f"a Value cannot hold {number} in JSON")
        return number
    if which == "struct_value":
        return encode_struct(message.struct_value)
    if which == "list_value":
        return encode_list_value(message.list_value)
    return getattr(message, which)


def encode_struct(message: Any) -> dict[str, Any]:
    return {key: encode_value(item) for key, item in message.fields.items()}


def encode_list_value(message: Any) -> list[Any]:
    return [encode_value(item) for item in message.values]


# -- decoders of the well-known types ----------------------------------------------------------------


def string_form(full_name: str) -> Decoder:
    described = STRING_FORMS[full_name]

    def decode(value: Any, message: Any, depth: int) -> None:
        if type(value) is not str:
            raise wrong(described, value)
        try:
            message.FromJsonString(value)
        except ValueError as exc:
            raise DecodeError(f"expected {described}: {exc}") from None

    return decode


def decode_value(value: Any, message: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise DecodeError(f"nested more than {MAX_DEPTH} deep")
    kind = type(value)
    if value is None:
        message.null_value = 0
    elif kind is bool:
        message.bool_value = value
    elif kind is str:
        message.string_value = string(value)
    elif kind is int or kind is float:
        try:
            message.number_value = value
        except (OverflowError, ValueError):
            raise DecodeError(f"{show(value)} is out of range") from None
    elif kind is dict:
        decode_struct(value, message.struct_value, depth + 1)
    elif kind is list:
        decode_list_value(value, message.list_value, depth + 1)
    else:
        raise wrong("a JSON value", value)


def decode_struct(value: Any, message: Any, depth: int) -> None:
    if type(value) is not dict:
        raise wrong("a JSON object", value)
    if depth > MAX_DEPTH:
        raise DecodeError(f"nested more than {MAX_DEPTH} deep")
    message.Clear()
    fields = message.fields
    for key, item in value.items():
        try:
            decode_value(item, fields[string(key)], depth + 1)
        except DecodeError as exc:
            exc.path.insert(0, key)
            raise


def decode_list_value(value: Any, message: Any, depth: int) -> None:
    if type(value) is not list:
        raise wrong("a JSON array", value)
    if depth > MAX_DEPTH:
        raise DecodeError(f"nested more than {MAX_DEPTH} deep")
    message.ClearField("values")
    values = message.values
    for index, item in enumerate(value):
        try:
            decode_value(item, values.add(), depth + 1)
        except DecodeError as exc:
            exc.path.insert(0, f"[{index}]")
            raise
