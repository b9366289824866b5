"""HTTP request -> gRPC request message, and gRPC response -> JSON body, for one binding.

The order is the one google/api/http.proto and grpc-gateway use: the body
first (`*`, one field, or none), then the path variables (a path value wins
over the same field in the body), then the query parameters for every field
not bound by path or body. A PATCH whose request has one FieldMask that the
client did not send gets the mask from the JSON keys of the body (AIP-134).

JSON follows the proto3 mapping through protobuf's own `json_format` (both
field names on input; lowerCamel, int64 as strings, enums as names on output);
its errors become field violations naming the path of the value
(`_violation`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
from typing import Any
from urllib.parse import parse_qsl

from google.protobuf import descriptor as d
from google.protobuf import json_format
from google.protobuf.message import Message

from . import fields as f
from .routes import Binding

#: Query keys that the bridge itself reads; never request fields.
RESERVED_QUERY = frozenset({"key", "timeout"})
#: Bound on query parameters per request (parsing more is work for an attacker, not a client).
MAX_QUERY_FIELDS = 1000
#: Longest value of a path variable or query parameter. A resource name is far shorter; an
#: upstream that quotes a longer one in its error goes past gRPC's 8 KiB metadata limit (a 429).
MAX_URL_VALUE = 1024
#: Bound on distinct query keys remembered per binding (unknown keys are not cached past it).
_QUERY_CACHE_SIZE = 512


@dataclass(frozen=True)
class Violation:
    field: str
    description: str


class BadRequest(Exception):
    """The HTTP request does not make a valid gRPC request; every problem names its field."""

    def __init__(self, violations: list[Violation], message: str | None = None) -> None:
        self.violations = violations
        self.message = message or "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(self.message)

    @classmethod
    def one(cls, field: str, description: str) -> BadRequest:
        return cls([Violation(field, description)])


@dataclass(frozen=True)
class _QueryTarget:
    path: f.FieldPath
    convert: f.Converter
    repeated: bool
    oneof: tuple[str, str] | None


def decode_request(binding: Binding, values: dict[str, str], query: str, body: bytes) -> Message:
    """The gRPC request for one HTTP request on `binding` (`values`: the decoded path variables)."""
    request = binding.rpc.request_class()
    document: Any = None
    if binding.has_body and body.strip():
        document = load_json(body, binding.body_prefix)
        if binding.object_body and type(document) is not dict:
            problem = f"expected a JSON object, got {_kind(document)}"
            raise BadRequest.one(binding.body_prefix or "body", problem)
        try:
            binding.decode_body(request, document)
        except (json_format.ParseError, ValueError, TypeError) as exc:
            raise BadRequest([_violation(exc)]) from None
    for path_field in binding.path_fields:
        path = path_field.path
        value = values[path_field.variable]
        if len(value) > MAX_URL_VALUE:
            raise BadRequest.one(path.text, f"is {len(value)} characters long, more than {MAX_URL_VALUE}")
        try:
            f.assign(path.parent_of(request), path.leaf, path_field.convert(value))
        except ValueError as exc:
            raise BadRequest.one(path.text, str(exc)) from None
    if query and binding.body != "*":
        _apply_query(binding, request, query)
    mask = binding.field_mask
    if mask is not None and isinstance(document, dict) and not request.HasField(mask.name):
        assert binding.body_path is not None
        getattr(request, mask.name).paths.extend(
            _mask_paths(f.message_type(binding.body_path.leaf), document)
        )
    return request


def load_json(body: bytes, prefix: str = "") -> Any:
    """The parsed body: strict JSON (no NaN/Infinity literals, no key twice in an object, no lone
    surrogate); `prefix` is the field path of the body (`body: "passenger"`), for errors."""
    try:
        text = body.decode()
        start = _WHITESPACE.match(text, 0).end()  # type: ignore[union-attr]
        value, end = _SCAN(text, start)
        end = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]
    except UnicodeDecodeError:
        raise BadRequest.one("body", "is not UTF-8") from None
    except RecursionError:
        raise BadRequest.one("body", "is nested too deeply") from None
    except StopIteration as stop:
        raise BadRequest.one("body", f"malformed JSON: expecting a value at character {stop.value}") from None
    except ValueError as exc:
        raise BadRequest.one("body", f"malformed JSON: {exc}") from None
    if end != len(text):
        raise BadRequest.one("body", f"malformed JSON: extra data at character {end}")
    if "\\u" in text:  # only an escape can make a lone surrogate, which protobuf cannot hold
        _check_unicode(value, prefix)
    return value


def _check_unicode(value: Any, path: str = "") -> None:
    """BadRequest naming where a string or key of the document holds a lone surrogate (`"\\ud800"`)."""
    if isinstance(value, str):
        if not _unicode(value):
            raise BadRequest.one(path or "body", _SURROGATE)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not _unicode(key):
                raise BadRequest.one(path or "body", f"a key {_SURROGATE}")
            _check_unicode(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_unicode(item, f"{path or 'body'}[{index}]")


def _unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_SURROGATE = "holds an unpaired surrogate escape, which is not a Unicode character"


_FAILED = re.compile(r"Failed to parse (\S+) field: ")
_AT = re.compile(r' at "?([^"\s]+?)"?$')
_UNKNOWN = re.compile(r'has no field named "(.*)"$')
_ONEOF = re.compile(r'multiple "(.*)" oneof fields$')


def _violation(error: Exception) -> Violation:
    """json_format's error as the path of the value the client sent and what is wrong with it.

    Its text says the path one of two ways: `Failed to parse a field: Failed to parse b
    field: ...` (field names, one level each), or `... at Request.a.b[2]` (a path from the
    request type, with indexes). The longer one wins; an unknown field or a second field of
    a oneof is named after the path of its message.
    """
    text = str(error).split("\n", 1)[0]
    path: list[str] = []
    while (failed := _FAILED.match(text)) is not None:
        path.append(failed.group(1))
        text = text[failed.end() :]
    text = text.rstrip(".")
    at = _AT.search(text)
    if at is not None:
        text = text[: at.start()].rstrip(".")
        located = at.group(1).split(".")[1:]  # from the request type's name
        if len(located) >= len(path):
            path = located
    if (unknown := _UNKNOWN.search(text)) is not None:
        path, text = [*path, unknown.group(1)], "unknown field"
    elif (oneof := _ONEOF.search(text)) is not None:
        path, text = [*path, oneof.group(1)], "more than one field of this oneof is set"
    return Violation(".".join(path) or "body", text)


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "null" if value is None else json.dumps(value)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key!r} appears twice in one object")
            seen.add(key)
    return found


def _constant(name: str) -> Any:
    raise ValueError(f'{name} is not JSON (write it as a string: "{name}")')


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


_JSON_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant)
_SCAN: Any = _JSON_DECODER.scan_once  # type: ignore[attr-defined]
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# The C encoder itself: JSONEncoder.encode builds one per call. No circular check (values are trees).
_ENCODE: Any = (
    c_make_encoder(None, _not_json, c_encode_basestring, None, ":", ",", False, False, False)
    if c_make_encoder is not None and c_encode_basestring is not None
    else json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).iterencode
)


def _apply_query(binding: Binding, request: Message, query: str) -> None:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        raise BadRequest.one("query", f"more than {MAX_QUERY_FIELDS} parameters") from None
    seen: set[str] = set()
    oneofs: dict[tuple[str, str], str] = {}
    problems: list[Violation] = []
    for key, value in pairs:
        if key in RESERVED_QUERY:
            continue
        if len(value) > MAX_URL_VALUE:
            problems.append(Violation(key, f"is {len(value)} characters long, more than {MAX_URL_VALUE}"))
            continue
        target = _query_target(binding, key)
        if target is None:
            continue
        if isinstance(target, Violation):
            problems.append(target)
            continue
        text = target.path.text
        if not target.repeated:
            if text in seen:
                problems.append(Violation(key, "given more than once"))
                continue
            seen.add(text)
        if target.oneof is not None:
            other = oneofs.setdefault(target.oneof, text)
            if other != text:
                problems.append(Violation(key, f"{other} of the same oneof is already set"))
                continue
        try:
            f.assign(target.path.parent_of(request), target.path.leaf, target.convert(value))
        except ValueError as exc:
            problems.append(Violation(key, str(exc)))
    if problems:
        raise BadRequest(problems)


def _query_target(binding: Binding, key: str) -> _QueryTarget | Violation | None:
    cache = binding.query_cache
    if key in cache:
        cached: _QueryTarget | Violation | None = cache[key]
        return cached
    target = _resolve_query(binding, key)
    if target is not None or len(cache) < _QUERY_CACHE_SIZE:
        cache[key] = target
    return target


def _resolve_query(binding: Binding, key: str) -> _QueryTarget | Violation | None:
    """What a query key sets; None for keys to ignore (unknown, or bound by path or body)."""
    try:
        path = f.resolve(binding.rpc.descriptor.input_type, key)
    except f.FieldError as exc:
        return None if exc.unknown else Violation(key, exc.description)
    proto_path = path.proto_path
    if any(proto_path[: n + 1] in binding.bound for n in range(len(proto_path))):
        return None
    try:
        f.check_url_field(path, allow_repeated=True)
        convert = f.converter(path.leaf)
    except f.FieldError as exc:
        return Violation(key, exc.description)
    oneof = path.leaf.containing_oneof
    return _QueryTarget(
        path=path,
        convert=convert,
        repeated=bool(path.leaf.is_repeated),
        oneof=None if oneof is None else (".".join(proto_path[:-1]), oneof.name),
    )


def _mask_paths(message: d.Descriptor, document: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """The field paths present in a JSON object: nested objects of plain messages give `a.b`."""
    lookup = f.names(message)
    for key, value in document.items():
        field = lookup.get(key)
        if field is None:
            continue
        path = prefix + field.name
        nested = (
            field.type == f.FD.TYPE_MESSAGE
            and not field.is_repeated
            and not f.full_type_name(field).startswith("google.protobuf.")
            and isinstance(value, dict)
            and value
        )
        if nested:
            yield from _mask_paths(f.message_type(field), value, path + ".")
        else:
            yield path


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8 (non-ASCII characters as they are; NaN and infinities refused)."""
    return "".join(_ENCODE(value, 0)).encode()
