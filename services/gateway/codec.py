"""Proto3 JSON, compiled once per message type: the bridge's replacement for `json_format`.

`json_format` walks descriptors on every call (ListFields, a lookup per field,
a method call per value); for a small message that is most of the bridge's
JSON time. Here each message type gets, on first use:

- an encoder: Python source generated from the descriptor (one straight-line
  function per type: `{"message": m.message, "n": str(m.n)}`), compiled with
  `compile()` so that a response costs one call per message;
- a decoder: a table from both field names (JSON and proto) to a setter made
  for that field, with the value checks of that field's type.

Output is exactly `json_format.MessageToDict(m, always_print_fields_with_no_presence=True)`
(tests compare the two on every field type and on the project's contracts):
lowerCamel names, fields without presence always written, 64-bit integers as
strings, enums as names (numbers when unknown), bytes as standard base64,
floats' NaN/Infinity as strings, and the well-known types in their JSON forms.
Keys come in declaration order.

Input accepts what the proto3 JSON mapping accepts: JSON or proto field names,
integers as numbers or strings (exponents allowed when the value is whole),
enums by name or number, bytes in standard or URL-safe base64 with or without
padding, `null` for "not set". It is stricter than `json_format` where that is
loose by accident: no booleans for numbers, no fractional enum numbers, no
whitespace, `_` or non-ASCII digits in numbers, no invalid base64 characters,
and a field given under both its names is an error. Errors are `DecodeError`
with the path of the offending value as the client wrote it (`items[2].label`).
"""

from __future__ import annotations

import keyword
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor as d
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from . import jsonvalues as v
from .jsonvalues import (
    ANY,
    NULL_VALUE,
    STRING_FORMS,
    WRAPPERS,
    DecodeError,
    Decoder,
    EncodeError,
)

FD = d.FieldDescriptor
Encoder = Callable[[Message], Any]
#: Sets one field of a message from a JSON value.
Setter = Callable[[Message, Any, int], None]


class Codec:
    """Encoders and decoders for the messages of one descriptor pool, compiled on first use."""

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self.pool = pool if pool is not None else descriptor_pool.Default()
        self._names: dict[str, str] = {}
        """Message full name -> the name of its encoder in `_namespace`."""
        self._compiled: set[str] = set()
        self._namespace: dict[str, Any] = {
            "_f64": v.f64,
            "_f32": v.f32,
            "_b64": v.b64,
            "_json_string": v.json_string,
            "_value": v.encode_value,
            "_struct": v.encode_struct,
            "_list_value": v.encode_list_value,
            "_any": self._encode_any,
            "_closed": _closed_enum_error,
        }
        self._decoders: dict[str, Decoder] = {}
        self._classes: dict[str, type[Message]] = {}

    # encoding

    def encoder(self, message: d.Descriptor) -> Encoder:
        """The function giving the JSON value (a dict, or a string/number for wrappers and such)."""
        found: Encoder = self._namespace[self._encoder_name(message)]
        return found

    def to_json(self, message: Message) -> Any:
        return self.encoder(_descriptor(message))(message)

    def _encoder_name(self, message: d.Descriptor) -> str:
        name = self._reserve(message)
        if message.full_name in self._compiled:
            return name
        self._compiled.add(message.full_name)
        pending: list[d.Descriptor] = []
        source = self._encoder_source(message, name, pending)
        code = compile(source, f"<json encoder of {message.full_name}>", "exec")
        exec(code, self._namespace)  # built from descriptor names; keys and literals quoted with repr()
        for other in pending:
            self._encoder_name(other)
        return name

    def _reserve(self, message: d.Descriptor) -> str:
        """The name of a type's encoder; a type can be referred to before its encoder is compiled."""
        name = self._names.get(message.full_name)
        if name is None:
            name = self._names[message.full_name] = f"_e{len(self._names)}"
        return name

    def _encoder_source(self, message: d.Descriptor, name: str, pending: list[d.Descriptor]) -> str:
        full_name = message.full_name
        if full_name in WRAPPERS:
            value = self._value_expression(message.fields_by_name["value"], "m.value", pending)
            return f"def {name}(m):\n    return {value}\n"
        if full_name in STRING_FORMS:
            return f"{name} = _json_string\n"
        if full_name == "google.protobuf.Value":
            return f"{name} = _value\n"
        if full_name == "google.protobuf.Struct":
            return f"{name} = _struct\n"
        if full_name == "google.protobuf.ListValue":
            return f"{name} = _list_value\n"
        if full_name == ANY:
            return f"{name} = _any\n"
        lines = [f"def {name}(m):"]
        literal: list[str] = []
        started = False
        for field in message.fields:
            key = repr(field.json_name)
            attribute = _attribute("m", field.name)
            if field.is_repeated and not _is_map(field):
                item = self._value_expression(field, "x", pending)
                value = f"list({attribute})" if item == "x" else f"[{item} for x in {attribute}]"
            elif _is_map(field):
                entry = field.message_type
                assert entry is not None
                key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
                key_text = "('true' if k else 'false')" if key_field.type == FD.TYPE_BOOL else "str(k)"
                item = self._value_expression(value_field, "v", pending)
                value = f"{{{key_text}: {item} for k, v in {attribute}.items()}}"
            else:
                value = self._value_expression(field, attribute, pending)
            if field.has_presence:
                if not started:
                    lines.append(f"    out = {{{', '.join(literal)}}}")
                    started = True
                lines.append(f"    if m.HasField({field.name!r}):")
                lines.append(f"        out[{key}] = {value}")
            elif started:
                lines.append(f"    out[{key}] = {value}")
            else:
                literal.append(f"{key}: {value}")
        if not started:
            lines.append(f"    return {{{', '.join(literal)}}}")
        else:
            lines.append("    return out")
        return "\n".join(lines) + "\n"

    def _value_expression(self, field: d.FieldDescriptor, value: str, pending: list[d.Descriptor]) -> str:
        """Python source turning `value` (one value of `field`) into its JSON form."""
        kind = field.type
        if kind in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
            assert field.message_type is not None
            if field.message_type.full_name not in self._compiled:
                pending.append(field.message_type)
            return f"{self._reserve(field.message_type)}({value})"
        if kind in v.INT64:
            return f"str({value})"
        if kind == FD.TYPE_DOUBLE:
            return f"_f64({value})"
        if kind == FD.TYPE_FLOAT:
            return f"_f32({value})"
        if kind == FD.TYPE_BYTES:
            return f"_b64({value})"
        if kind == FD.TYPE_ENUM:
            enum = field.enum_type
            assert enum is not None
            if enum.full_name == NULL_VALUE:
                return "None"
            table = f"_t{len(self._namespace)}"
            self._namespace[table] = {item.number: item.name for item in enum.values}
            if getattr(enum, "is_closed", False):
                return f"({table}.get({value}) or _closed({enum.full_name!r}, {value}))"
            return f"{table}.get({value}, {value})"
        return value

    def _encode_any(self, message: Any) -> Any:
        if not message.ListFields():
            return {}
        type_url: str = message.type_url
        inner = self.message_class(type_url.split("/")[-1])()
        inner.ParseFromString(message.value)
        encoded = self.to_json(inner)
        full_name = inner.DESCRIPTOR.full_name
        if full_name in v.SPECIAL_IN_ANY:
            return {"@type": type_url, "value": encoded}
        return {"@type": type_url, **encoded}

    def message_class(self, full_name: str) -> type[Message]:
        found = self._classes.get(full_name)
        if found is None:
            try:
                descriptor = self.pool.FindMessageTypeByName(full_name)
            except KeyError:
                raise TypeError(f"unknown message type {full_name}") from None
            found = self._classes[full_name] = message_factory.GetMessageClass(descriptor)
        return found

    # decoding

    def decoder(self, message: d.Descriptor) -> Decoder:
        """The function merging a JSON value into a message of this type (raises DecodeError)."""
        found = self._decoders.get(message.full_name)
        if found is None:
            found = self._decoders[message.full_name] = self._make_decoder(message)
        return found

    def from_json(self, value: Any, message: Message) -> Message:
        self.decoder(_descriptor(message))(value, message, 1)
        return message

    def _make_decoder(self, message: d.Descriptor) -> Decoder:
        full_name = message.full_name
        if full_name in WRAPPERS:
            convert = v.scalar(message.fields_by_name["value"])

            def wrapper(value: Any, target: Any, depth: int) -> None:
                target.value = convert(value)

            return wrapper
        if full_name in STRING_FORMS:
            return v.string_form(full_name)
        if full_name == "google.protobuf.Value":
            return v.decode_value
        if full_name == "google.protobuf.Struct":
            return v.decode_struct
        if full_name == "google.protobuf.ListValue":
            return v.decode_list_value
        if full_name == ANY:
            return self._decode_any
        setters: dict[str, tuple[Setter, str | None, str | None]] = {}
        for field in message.fields:
            setter = self.setter(field)
            oneof = field.containing_oneof
            group = None if oneof is None or _is_synthetic(oneof) else oneof.name
            setters[field.json_name] = (setter, group, field.name if field.name != field.json_name else None)
            if field.name != field.json_name:
                setters.setdefault(field.name, (setter, group, field.json_name))
        name = full_name

        def decode(value: Any, target: Any, depth: int) -> None:
            if type(value) is not dict:
                raise v.wrong("a JSON object", value)
            if depth > v.MAX_DEPTH:
                raise DecodeError(f"nested more than {v.MAX_DEPTH} deep")
            groups: dict[str, str] | None = None
            for key, item in value.items():
                entry = setters.get(key)
                if entry is None:
                    raise DecodeError("unknown field", [key])
                setter, group, other_name = entry
                if other_name is not None and other_name in value:
                    raise DecodeError(f"also given as {other_name}", [key])
                if group is not None and item is not None:
                    if groups is None:
                        groups = {}
                    first = groups.setdefault(group, key)
                    if first != key:
                        raise DecodeError(f"{first} of the same oneof ({group}) is already set", [key])
                try:
                    setter(target, item, depth)
                except DecodeError as exc:
                    exc.path.insert(0, key)
                    raise

        decode.__qualname__ = f"decode[{name}]"
        return decode

    def setter(self, field: d.FieldDescriptor) -> Setter:
        """Sets `field` of a message from the JSON value of that field (null clears it)."""
        name = field.name
        if _is_map(field):
            return self._map_setter(field)
        if field.type in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
            assert field.message_type is not None
            nested = field.message_type
            is_value = nested.full_name == "google.protobuf.Value"
            decoders = self._decoders

            def lazy(full_name: str = nested.full_name) -> Decoder:
                found = decoders.get(full_name)
                return found if found is not None else self.decoder(nested)

            if field.is_repeated:

                def repeated_messages(target: Any, value: Any, depth: int) -> None:
                    if value is None:
                        target.ClearField(name)
                        return
                    if type(value) is not list:
                        raise v.wrong("a JSON array", value)
                    target.ClearField(name)
                    container = getattr(target, name)
                    decode = lazy()
                    for index, item in enumerate(value):
                        try:
                            if item is None and not is_value:
                                raise DecodeError("null is not allowed in an array")
                            decode(item, container.add(), depth + 1)
                        except DecodeError as exc:
                            exc.path.insert(0, f"[{index}]")
                            raise

                return repeated_messages

            def message(target: Any, value: Any, depth: int) -> None:
                if value is None:
                    if is_value:
                        getattr(target, name).null_value = 0
                    else:
                        target.ClearField(name)
                    return
                sub = getattr(target, name)
                sub.SetInParent()
                lazy()(value, sub, depth + 1)

            return message
        convert = v.scalar(field)
        if field.is_repeated:

            def repeated_scalars(target: Any, value: Any, depth: int) -> None:
                if value is None:
                    target.ClearField(name)
                    return
                if type(value) is not list:
                    raise v.wrong("a JSON array", value)
                items = []
                for index, item in enumerate(value):
                    try:
                        if item is None:
                            raise DecodeError("null is not allowed in an array")
                        items.append(convert(item))
                    except DecodeError as exc:
                        exc.path.insert(0, f"[{index}]")
                        raise
                target.ClearField(name)
                getattr(target, name).extend(items)

            return repeated_scalars
        if (
            field.type == FD.TYPE_ENUM
            and field.enum_type is not None
            and field.enum_type.full_name == NULL_VALUE
        ):

            def null_value(target: Any, value: Any, depth: int) -> None:
                setattr(target, name, 0 if value is None else convert(value))

            return null_value

        def scalar(target: Any, value: Any, depth: int) -> None:
            if value is None:
                target.ClearField(name)
            else:
                setattr(target, name, convert(value))

        return scalar

    def _map_setter(self, field: d.FieldDescriptor) -> Setter:
        name = field.name
        entry = field.message_type
        assert entry is not None
        key_of = v.map_key(entry.fields_by_name["key"])
        value_field = entry.fields_by_name["value"]
        if value_field.type == FD.TYPE_MESSAGE:
            assert value_field.message_type is not None
            nested = value_field.message_type

            def messages(target: Any, value: Any, depth: int) -> None:
                if value is None:
                    target.ClearField(name)
                    return
                if type(value) is not dict:
                    raise v.wrong("a JSON object", value)
                target.ClearField(name)
                container = getattr(target, name)
                decode = self.decoder(nested)
                for key, item in value.items():
                    try:
                        decode(item, container[key_of(key)], depth + 1)
                    except DecodeError as exc:
                        exc.path.insert(0, f"[{key!r}]")
                        raise

            return messages
        convert = v.scalar(value_field)

        def scalars(target: Any, value: Any, depth: int) -> None:
            if value is None:
                target.ClearField(name)
                return
            if type(value) is not dict:
                raise v.wrong("a JSON object", value)
            converted = {}
            for key, item in value.items():
                try:
                    converted[key_of(key)] = convert(item)
                except DecodeError as exc:
                    exc.path.insert(0, f"[{key!r}]")
                    raise
            target.ClearField(name)
            getattr(target, name).update(converted)

        return scalars

    def _decode_any(self, value: Any, message: Any, depth: int) -> None:
        if type(value) is not dict:
            raise v.wrong("a JSON object", value)
        if not value:
            return
        type_url = value.get("@type")
        if type(type_url) is not str:
            raise DecodeError("@type is missing")
        try:
            inner = self.message_class(type_url.split("/")[-1])()
        except TypeError as exc:
            raise DecodeError(str(exc), ["@type"]) from None
        full_name = inner.DESCRIPTOR.full_name
        decode = self.decoder(_descriptor(inner))
        if full_name in v.SPECIAL_IN_ANY:
            if "value" not in value:
                raise DecodeError("missing", ["value"])
            try:
                decode(value["value"], inner, depth + 1)
            except DecodeError as exc:
                exc.path.insert(0, "value")
                raise
        else:
            decode({k: v for k, v in value.items() if k != "@type"}, inner, depth)
        message.type_url = type_url
        message.value = inner.SerializeToString()


def _descriptor(message: Message) -> d.Descriptor:
    found: d.Descriptor = message.DESCRIPTOR  # type: ignore[assignment]
    return found


def _closed_enum_error(enum: str, number: int) -> Any:
    raise EncodeError(f"{number} is not a value of the closed enum {enum}")


def _is_map(field: d.FieldDescriptor) -> bool:
    return (
        field.type == FD.TYPE_MESSAGE
        and field.message_type is not None
        and bool(field.message_type.GetOptions().map_entry)
    )


def _is_synthetic(oneof: d.OneofDescriptor) -> bool:
    """The oneof protoc makes for a proto3 `optional` field: not a real choice between fields."""
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


def _attribute(owner: str, name: str) -> str:
    if name.isidentifier() and not keyword.iskeyword(name):
        return f"{owner}.{name}"
    return f"getattr({owner}, {name!r})"
