"""Fields addressed by text: `a.b.c` paths (proto or JSON names) and values from URLs.

Path variables and query parameters arrive as strings; each field gets one
converter, built once and cached, that turns such a string into what the
field holds (ints, bools, enums by name or number, base64 bytes, and the
well-known types Timestamp, Duration, FieldMask and the wrappers).
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor as d
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

FD = d.FieldDescriptor

#: A value from a URL turned into what the field holds, or ValueError saying why not
#: (integers out of range say so when they are assigned: protobuf checks them).
Converter = Callable[[str], Any]

_WRAPPERS = frozenset(f"google.protobuf.{name}" for name in wrappers_pb2.DESCRIPTOR.message_types_by_name)
#: Message types a single URL string can stand for.
URL_MESSAGES = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask", *_WRAPPERS}
)
_INTEGERS = frozenset({FD.CPPTYPE_INT32, FD.CPPTYPE_INT64, FD.CPPTYPE_UINT32, FD.CPPTYPE_UINT64})
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


class FieldError(ValueError):
    """A field path or value that cannot be used; `field` is the path as the client wrote it."""

    def __init__(self, field: str, description: str, *, unknown: bool = False) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description
        self.unknown = unknown
        """The path names a field that does not exist (as opposed to one that cannot be used)."""


@functools.cache
def names(message: d.Descriptor) -> dict[str, d.FieldDescriptor]:
    """Every field of a message by proto name and by JSON name."""
    found: dict[str, d.FieldDescriptor] = {}
    for field in message.fields:
        found[field.name] = field
        found.setdefault(field.json_name, field)
    return found


def message_type(field: d.FieldDescriptor) -> d.Descriptor:
    """The message type of a message field (the stubs say it may be None)."""
    found = field.message_type
    if found is None:
        raise TypeError(f"{field.full_name} is not a message field")
    return found


def full_type_name(field: d.FieldDescriptor) -> str:
    """The full name of a message field's type, '' for other fields."""
    return field.message_type.full_name if field.message_type is not None else ""


def is_map(field: d.FieldDescriptor) -> bool:
    return (
        bool(field.is_repeated)
        and field.type == FD.TYPE_MESSAGE
        and bool(message_type(field).GetOptions().map_entry)
    )


@dataclass(frozen=True)
class FieldPath:
    """A resolved `a.b.c`: the fields from the request down to the leaf."""

    fields: tuple[d.FieldDescriptor, ...]

    @property
    def leaf(self) -> d.FieldDescriptor:
        return self.fields[-1]

    @property
    def proto_path(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def text(self) -> str:
        return ".".join(self.proto_path)

    def parent_of(self, message: Message) -> Message:
        """The message holding the leaf, creating the intermediate messages."""
        for field in self.fields[:-1]:
            message = getattr(message, field.name)
        return message


def resolve(
    message: d.Descriptor, path: str | tuple[str, ...], *, proto_names_only: bool = False
) -> FieldPath:
    """The fields of `path` (proto or JSON names); every step but the last must be a singular message."""
    parts = path.split(".") if isinstance(path, str) else path
    fields: list[d.FieldDescriptor] = []
    current: d.Descriptor | None = message
    for index, part in enumerate(parts):
        if current is None:
            raise FieldError(".".join(parts[:index]), "is not a message, it has no fields", unknown=True)
        field = current.fields_by_name.get(part) if proto_names_only else names(current).get(part)
        if field is None:
            raise FieldError(
                ".".join(parts[: index + 1]), f"no such field in {current.full_name}", unknown=True
            )
        fields.append(field)
        last = index == len(parts) - 1
        if not last:
            if field.type != FD.TYPE_MESSAGE:
                raise FieldError(".".join(parts[: index + 2]), "no such field", unknown=True)
            if field.is_repeated:
                raise FieldError(".".join(parts[: index + 1]), "is not a singular message field")
            current = field.message_type
    return FieldPath(tuple(fields))


def check_url_field(path: FieldPath, *, allow_repeated: bool) -> None:
    """Whether a string from a URL can be assigned to this field at all."""
    leaf = path.leaf
    if is_map(leaf):
        raise FieldError(path.text, "map fields cannot be set from the URL")
    if leaf.type == FD.TYPE_MESSAGE:
        if leaf.is_repeated:
            raise FieldError(path.text, "repeated message fields cannot be query parameters")
        if full_type_name(leaf) not in URL_MESSAGES:
            raise FieldError(path.text, f"a {full_type_name(leaf)} cannot be set from the URL")
    if leaf.is_repeated and not allow_repeated:
        raise FieldError(path.text, "a repeated field cannot be a path variable")


@functools.cache
def converter(field: d.FieldDescriptor) -> Converter:
    """The converter for values of `field` (the element type for repeated fields)."""
    kind = field.type
    if kind == FD.TYPE_STRING:
        return _string
    if field.cpp_type in _INTEGERS:
        return _integer
    if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return _float
    if kind == FD.TYPE_BOOL:
        return _bool
    if kind == FD.TYPE_BYTES:
        return _bytes
    if kind == FD.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        return functools.partial(_enum, enum=enum, closed=bool(getattr(enum, "is_closed", False)))
    if kind == FD.TYPE_MESSAGE and full_type_name(field) in URL_MESSAGES:
        return functools.partial(_well_known, message=message_type(field))
    raise FieldError(field.name, f"a {full_type_name(field)} cannot be set from the URL")


def assign(parent: Message, field: d.FieldDescriptor, value: Any) -> None:
    """Set (or append to) `field` of `parent` with a converted value."""
    if field.is_repeated:
        container = getattr(parent, field.name)
        if field.type == FD.TYPE_MESSAGE:
            container.add().CopyFrom(value)
        else:
            container.append(value)
    elif field.type == FD.TYPE_MESSAGE:
        getattr(parent, field.name).CopyFrom(value)
    else:
        setattr(parent, field.name, value)


def _string(value: str) -> str:
    return value


def _integer(value: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def _float(value: str) -> float:
    special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
    if value in special:
        return special[value]
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"expected a number, got {value!r} (use NaN, Infinity, -Infinity)")
    return number


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _bytes(value: str) -> bytes:
    # A '+' of standard base64 arrives as ' ' when the client did not escape it in a query string.
    text = value.replace(" ", "+").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("expected base64 (standard or URL-safe)") from None


def _enum(value: str, enum: d.EnumDescriptor, closed: bool) -> int:
    known = enum.values_by_name.get(value)
    if known is not None:
        return int(known.number)
    try:
        number = int(value, 10)
    except ValueError:
        choices = ", ".join(enum.values_by_name)
        raise ValueError(f"expected one of {choices}, or a number; got {value!r}") from None
    if closed and number not in enum.values_by_number:
        raise ValueError(f"{number} is not a value of {enum.full_name}")
    return number


def _well_known(value: str, message: d.Descriptor) -> Message:
    from google.protobuf import message_factory

    instance: Any = message_factory.GetMessageClass(message)()
    name = message.full_name
    try:
        if name == "google.protobuf.FieldMask":
            instance.paths.extend(_mask_path(p) for p in value.split(",") if p)
        elif name in _WRAPPERS:
            instance.value = converter(message.fields_by_name["value"])(value)
        else:
            instance.FromJsonString(value)
    except Exception as exc:  # the JSON parsers raise their own error types
        raise ValueError(f"not a valid {name.rsplit('.', 1)[1]}: {exc}") from None
    result: Message = instance
    return result


def _mask_path(path: str) -> str:
    """FieldMask paths may be written in JSON (`displayName`) or proto (`display_name`) form."""
    return ".".join(
        _CAMEL.sub("_", part).lower() if part != part.lower() else part for part in path.split(".")
    )
