"""The route table: every `google.api.http` binding of the API, compiled into a segment trie.

Each binding (the rule and its `additional_bindings`) becomes one route;
methods without a rule are reachable as `POST /{package.Service}/{Method}`
with the whole request as the body. Matching walks the request's path
segments through a trie per HTTP method, trying a literal child before a `*`
child before a `**` tail, so literal routes win over wildcard ones and the
first route found is the most specific. Everything about a binding that does
not depend on the request (field paths, converters, which fields the path and
body bind, whether it continues work: `continues`) is resolved here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor as d
from google.protobuf import json_format
from google.protobuf.message import Message

from services.runtime.principal import INTERNAL as INTERNAL  # re-exported: the bridge's labels
from services.runtime.principal import restriction as restriction

from . import fields as f
from .api import Api
from .template import DOUBLE_STAR, STAR, Template, TemplateError, decode_single, parse

_KINDS = ("get", "put", "post", "delete", "patch")
#: Merges a parsed JSON body into a request message (raises json_format.ParseError).
BodyDecoder = Callable[[Message, Any], None]
#: The JSON value of a response message.
Encoder = Callable[[Message], Any]


@dataclass(frozen=True)
class Rpc:
    """A method of the API as the bridge calls it."""

    path: str
    """The gRPC method path, `/pkg.Service/Method`."""
    descriptor: d.MethodDescriptor
    request_class: type[Message]
    response_class: type[Message]
    labels: frozenset[str] = frozenset()
    """Its `google.api.method_visibility` restriction: who besides everyone may call it (`restriction`)."""

    @cached_property  # read on every request: once from the descriptor, then from the instance
    def server_streaming(self) -> bool:
        return bool(self.descriptor.server_streaming)

    @cached_property
    def client_streaming(self) -> bool:
        return bool(self.descriptor.client_streaming)

    @property
    def service(self) -> d.ServiceDescriptor:
        return self.descriptor.containing_service


@dataclass(frozen=True)
class PathField:
    """A path variable and the request field it sets."""

    variable: str
    path: f.FieldPath
    convert: f.Converter


@dataclass
class Binding:
    """One HTTP binding of an RPC: method, template, and what goes where."""

    rpc: Rpc
    http_method: str
    template: Template
    body: str
    """'' (no body), '*' (the whole request) or a field path."""
    body_path: f.FieldPath | None
    response_body: f.FieldPath | None
    path_fields: tuple[PathField, ...]
    bound: frozenset[tuple[str, ...]]
    """Proto field paths set by the path or the body: query parameters under them are ignored."""
    field_mask: d.FieldDescriptor | None
    """The request's only FieldMask field, on a PATCH with a message body (filled from the body's keys)."""
    decode_body: BodyDecoder
    """Merges the parsed JSON body into the request where `body` says (raises json_format.ParseError)."""
    body_prefix: str
    """How errors name the body: '' for `*`, else the body field's JSON path."""
    object_body: bool
    """The body must be a JSON object: the request, or a field of a message type of ours."""
    encode: Encoder
    """The JSON value of a response: the message, or its `response_body` field."""
    query_cache: dict[str, Any] = field(default_factory=dict)
    """Query key -> resolved field (or the error it gives), filled as keys are seen."""
    annotated: bool = True
    continues: bool = False
    """Its path names an existing resource (`continues`): under overload it goes before new work."""

    @property
    def has_body(self) -> bool:
        return bool(self.body)


class RouteError(ValueError):
    """A binding that cannot be served (bad template, field that does not exist)."""


@dataclass
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    star: _Node | None = None
    ends: dict[str | None, Binding] = field(default_factory=dict)
    """Bindings whose template ends here, by verb."""
    rest: dict[str | None, Binding] = field(default_factory=dict)
    """Bindings whose template ends with `**` here, by verb."""


@dataclass(frozen=True)
class Match:
    binding: Binding
    values: dict[str, str]


class RouteTable:
    """Every binding of the API, by HTTP method, ready for matching."""

    def __init__(self) -> None:
        self._tries: dict[str, _Node] = {}
        self._exact: dict[tuple[str, str], Match] = {}
        """(method, path) of routes without variables or wildcards, as written in the template."""
        self.bindings: list[Binding] = []
        self.problems: list[str] = []
        """Bindings left out, and why (logged at start-up)."""

    def add(self, binding: Binding) -> None:
        node = self._tries.setdefault(binding.http_method, _Node())
        segments = binding.template.segments
        for index, segment in enumerate(segments):
            if segment == DOUBLE_STAR:
                assert index == len(segments) - 1
                self._place(node.rest, binding)
                return
            if segment == STAR:
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                node = node.literals.setdefault(decode_single(segment), _Node())
        self._place(node.ends, binding)

    def _place(self, slot: dict[str | None, Binding], binding: Binding) -> None:
        verb = binding.template.verb
        taken = slot.get(verb)
        if taken is not None:
            self.problems.append(
                f"{binding.http_method} {binding.template.source} of {binding.rpc.path} is shadowed by "
                f"{taken.http_method} {taken.template.source} of {taken.rpc.path}"
            )
            return
        slot[verb] = binding
        self.bindings.append(binding)
        template = binding.template
        if not template.variables and STAR not in template.segments and DOUBLE_STAR not in template.segments:
            path = "/" + "/".join(template.segments) + (":" + template.verb if template.verb else "")
            self._exact[(binding.http_method, path)] = Match(binding, {})

    def match(self, method: str, raw_path: str) -> Match | None:
        """The binding for `method` on `raw_path` (still percent-encoded), with the decoded variables."""
        exact = self._exact.get((method, raw_path))
        if exact is not None:
            return exact
        root = self._tries.get(method)
        wildcard = self._tries.get("*")
        for node in (root, wildcard):
            if node is not None:
                found = _match_in(node, raw_path)
                if found is not None:
                    return found
        return None

    def allowed(self, raw_path: str) -> list[str]:
        """The HTTP methods some binding accepts on this path (for 405 and CORS)."""
        return sorted(m for m, node in self._tries.items() if m != "*" and _match_in(node, raw_path))


def _match_in(root: _Node, raw_path: str) -> Match | None:
    if not raw_path.startswith("/"):
        return None
    parts = raw_path[1:].split("/")
    last = parts[-1]
    colon = last.rfind(":")
    if colon >= 0:
        with_verb = [*parts[:-1], last[:colon]]
        binding = _walk(root, with_verb, 0, last[colon + 1 :])
        if binding is not None:
            return Match(binding, binding.template.capture(with_verb))
    binding = _walk(root, parts, 0, None)
    if binding is not None:
        return Match(binding, binding.template.capture(parts))
    return None


def _walk(node: _Node, parts: list[str], index: int, verb: str | None) -> Binding | None:
    if index == len(parts):
        return node.ends.get(verb) or node.rest.get(verb)
    segment = parts[index]
    child = node.literals.get(decode_single(segment) if "%" in segment else segment)
    if child is not None:
        found = _walk(child, parts, index + 1, verb)
        if found is not None:
            return found
    if node.star is not None and segment:
        found = _walk(node.star, parts, index + 1, verb)
        if found is not None:
            return found
    return node.rest.get(verb)


def labels_of(api: Api) -> frozenset[str]:
    """Every visibility label some method of the API is restricted to."""
    return frozenset(label for s in api.services for m in s.methods for label in restriction(m))


def build(api: Api, scopes: frozenset[str] = frozenset()) -> RouteTable:
    """The route table of the methods of the API that callers granted `scopes` may call.

    A method restricted to labels none of `scopes` names is left out: to those
    callers it does not exist (404), and their OpenAPI document does not list it.
    A client- or bidi-streaming method takes one request per line of the body, so its
    bindings must take the whole request as the body (`body: "*"`); others are left out
    with a problem said at start-up.
    """
    table = RouteTable()
    scopes = scopes - {INTERNAL}
    for service in api.services:
        for method in service.methods:
            labels = restriction(method)
            if labels and not labels & scopes:
                continue
            rpc = Rpc(
                path=f"/{service.full_name}/{method.name}",
                descriptor=method,
                request_class=api.message_class(method.input_type),
                response_class=api.message_class(method.output_type),
                labels=labels,
            )
            for binding in _bindings(rpc, table.problems):
                if rpc.client_streaming and binding.body != "*":
                    table.problems.append(
                        f"{rpc.path}: {binding.http_method} {binding.template.source}: a client-streaming "
                        'method takes one request per line of the body, so it needs body: "*"'
                    )
                    continue
                table.add(binding)
    return table


def _bindings(rpc: Rpc, problems: list[str]) -> Iterable[Binding]:
    options = rpc.descriptor.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        yield compile_binding(rpc, "POST", f"/{rpc.service.full_name}/{rpc.descriptor.name}", "*", "", False)
        return
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    for one in (rule, *rule.additional_bindings):
        kind = one.WhichOneof("pattern")
        if kind is None:
            problems.append(f"{rpc.path}: an http rule without a pattern")
            continue
        if kind == "custom":
            http_method, template = one.custom.kind.upper(), one.custom.path
        else:
            http_method, template = kind.upper(), getattr(one, kind)
        try:
            yield compile_binding(rpc, http_method, template, one.body, one.response_body)
        except (RouteError, TemplateError, f.FieldError) as exc:
            problems.append(f"{rpc.path}: {http_method} {template}: {exc}")


def compile_binding(
    rpc: Rpc, http_method: str, source: str, body: str, response_body: str, annotated: bool = True
) -> Binding:
    """Resolve one binding against the request and response types."""
    template = parse(source)
    request = rpc.descriptor.input_type
    path_fields: list[PathField] = []
    bound: set[tuple[str, ...]] = set()
    for variable in template.variables:
        path = f.resolve(request, variable.field_path, proto_names_only=True)
        f.check_url_field(path, allow_repeated=False)
        path_fields.append(PathField(variable.name, path, f.converter(path.leaf)))
        bound.add(path.proto_path)
    body_path: f.FieldPath | None = None
    if body and body != "*":
        body_path = f.resolve(request, body, proto_names_only=True)
        bound.add(body_path.proto_path)
    response_path = (
        f.resolve(rpc.descriptor.output_type, response_body, proto_names_only=True) if response_body else None
    )
    return Binding(
        rpc=rpc,
        http_method=http_method,
        template=template,
        body=body,
        body_path=body_path,
        response_body=response_path,
        path_fields=tuple(path_fields),
        bound=frozenset(bound),
        field_mask=_patch_mask(request, http_method, body_path),
        decode_body=_body_decoder(rpc, body_path),
        body_prefix="" if body_path is None else ".".join(f.json_name for f in body_path.fields),
        object_body=body_path is None or _plain_message(body_path.leaf),
        encode=_response_encoder(rpc, response_path),
        annotated=annotated,
        continues=_names_resource(template),
    )


def _names_resource(template: Template) -> bool:
    """Whether a call on this path continues work already admitted rather than starting new work.

    Decided from the contract (AIP-131..136 paths): a path that ends in a variable names an
    existing resource (`GET /v1/{name=trips/*}`, `POST /v1/{name=trips/*}:cancel`, `PATCH`,
    `DELETE`), so the call acts on something a caller was already given; a path ending in a
    literal names a collection or the API itself (`POST /v1/trips`, `GET /v1/drivers`,
    `POST /v1/passengers:signIn`, `GET /v1/{parent=passengers/*}/notifications`) and starts
    something. Under overload the gateway refuses new work first (limits.InFlight)."""
    if not template.variables:
        return False
    last = template.variables[-1]
    return last.end is None or last.end == len(template.segments)


def _body_decoder(rpc: Rpc, body: f.FieldPath | None) -> BodyDecoder:
    """json_format, the proto3 JSON mapping's reference; a body field's value is parsed as the
    request `{"a": {"b": value}}`, so its errors name the field's whole path."""
    names = [] if body is None else [x.json_name for x in reversed(body.fields)]
    pool = rpc.service.file.pool

    def decode(request: Message, document: Any) -> None:
        for name in names:
            document = {name: document}
        json_format.ParseDict(document, request, descriptor_pool=pool)

    return decode


def _response_encoder(rpc: Rpc, response_body: f.FieldPath | None) -> Encoder:
    """json_format: lowerCamel names, fields without presence always written (as grpc-gateway
    does), 64-bit integers as strings, enums by name, the well-known types in their JSON forms."""
    pool = rpc.service.file.pool

    def encode(message: Message) -> Any:
        return json_format.MessageToDict(
            message, always_print_fields_with_no_presence=True, descriptor_pool=pool
        )

    if response_body is None:
        return encode
    names = [x.json_name for x in response_body.fields]
    leaf = response_body.leaf
    message_leaf = leaf.type == f.FD.TYPE_MESSAGE and not leaf.is_repeated

    def pick(message: Message) -> Any:
        data = encode(message)
        for name in names:
            data = data.get(name) if isinstance(data, dict) else None
        if data is None and message_leaf:
            return {}
        return data

    return pick


def _plain_message(field: d.FieldDescriptor) -> bool:
    """A singular message field whose JSON form is an object of its fields (not a well-known type)."""
    return (
        field.type == f.FD.TYPE_MESSAGE
        and not field.is_repeated
        and not f.full_type_name(field).startswith("google.protobuf.")
    )


def _patch_mask(
    request: d.Descriptor, http_method: str, body: f.FieldPath | None
) -> d.FieldDescriptor | None:
    if http_method != "PATCH" or body is None or body.leaf.type != f.FD.TYPE_MESSAGE:
        return None
    masks = [
        x
        for x in request.fields
        if x.type == f.FD.TYPE_MESSAGE
        and f.full_type_name(x) == "google.protobuf.FieldMask"
        and not x.is_repeated
    ]
    return masks[0] if len(masks) == 1 else None
