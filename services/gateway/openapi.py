"""The OpenAPI 3.1 document of the bridge, generated from the same descriptors as the routes.

One operation per binding. Path variables become path parameters: a
multi-segment variable such as `{name=passengers/*}` is written with its
literal segments in the path and one parameter per `*`, named after the
collection (`/v1/passengers/{passenger}`), so an ordinary OpenAPI client that
fills the parameter and percent-encodes it produces a URL the bridge matches.
Fields not bound by path or body are query parameters (nested ones dotted,
lowerCamel). Every message reachable from an operation is a schema under
`components/schemas`, named by its full name, described by its proto comment;
`REQUIRED` fields are `required`, `OUTPUT_ONLY` ones `readOnly`, `INPUT_ONLY` ones `writeOnly`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from google.api import field_behavior_pb2, resource_pb2
from google.protobuf import descriptor as d

from services.runtime.validation import ResourceRegistry, pattern_regex

from . import comments
from . import fields as f
from .api import Api
from .routes import Binding, RouteTable
from .template import DOUBLE_STAR, STAR

FD = d.FieldDescriptor
ERROR_SCHEMA = "Status"
#: The name of a message's schema as an update body (no `required`) is its full name plus this.
PARTIAL_SUFFIX = ".partial"
_REF = "#/components/schemas/"
_INT32 = {FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32}
_UINT32 = {FD.TYPE_UINT32, FD.TYPE_FIXED32}
_INT64 = {FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64, FD.TYPE_UINT64, FD.TYPE_FIXED64}
_WRAPPED: dict[str, dict[str, Any]] = {
    "google.protobuf.DoubleValue": {"type": ["number", "null"]},
    "google.protobuf.FloatValue": {"type": ["number", "null"]},
    "google.protobuf.Int64Value": {"type": ["string", "null"], "format": "int64"},
    "google.protobuf.UInt64Value": {"type": ["string", "null"], "format": "uint64"},
    "google.protobuf.Int32Value": {"type": ["integer", "null"], "format": "int32"},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"], "format": "int64", "minimum": 0},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "examples": ["1.5s"],
    },
    "google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated field paths."},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
    **_WRAPPED,
}
#: Ranges the well-known google.type messages document for their fields.
_LIMITS: dict[str, dict[str, Any]] = {
    "google.type.LatLng.latitude": {"minimum": -90, "maximum": 90},
    "google.type.LatLng.longitude": {"minimum": -180, "maximum": 180},
    "google.type.Money.nanos": {"minimum": -999_999_999, "maximum": 999_999_999},
}
_ERROR = {
    "type": "object",
    "description": "An error: the gRPC status code, a message, and details such as ErrorInfo and BadRequest.",
    "properties": {
        "code": {"type": "integer", "format": "int32", "description": "The gRPC status code."},
        "message": {"type": "string"},
        "details": {
            "type": "array",
            "items": {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"]},
        },
    },
    "required": ["code", "message", "details"],
}


def document(
    api: Api, table: RouteTable, *, title: str = "Rideshare API", api_keys: bool = True
) -> dict[str, Any]:
    """The whole document."""
    builder = _Builder(comments.index(api.files.values()), _resources(api))
    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for binding in table.bindings:
        method = binding.http_method.lower()
        if method not in ("get", "put", "post", "delete", "patch", "head", "options", "trace"):
            continue
        path, parameters = _path(binding)
        item = paths.setdefault(path, {})
        if method in item:
            continue
        operation = builder.operation(binding, parameters, used_ids)
        item[method] = operation
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "v1",
            "description": "HTTP/JSON for the gRPC services, transcoded from their google.api.http rules.",
        },
        "paths": paths,
        "components": {"schemas": {ERROR_SCHEMA: _ERROR, **builder.schemas}},
    }
    if api_keys:
        doc["components"]["securitySchemes"] = {
            "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            "ApiKeyQuery": {"type": "apiKey", "in": "query", "name": "key"},
            "BearerToken": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A passenger's or driver's access_token from signIn or refreshSession, "
                "with an API key that has the rides scope.",
            },
        }
        doc["security"] = [
            {"ApiKeyHeader": []},
            {"ApiKeyQuery": []},
            {"ApiKeyHeader": [], "BearerToken": []},
            {"ApiKeyQuery": [], "BearerToken": []},
        ]
    return doc


def _path(binding: Binding) -> tuple[str, list[tuple[str, str, bool]]]:
    """The OpenAPI path and its parameters: (parameter name, field path text, rest-of-path?)."""
    template = binding.template
    starts = {v.start: v for v in template.variables}
    out: list[str] = []
    parameters: list[tuple[str, str, bool]] = []
    taken: set[str] = set()
    index = 0
    segments = template.segments
    while index < len(segments):
        var = starts.get(index)
        if var is None:
            segment = segments[index]
            if segment in (STAR, DOUBLE_STAR):
                name = _unique("segment", taken)
                out.append("{" + name + "}")
                parameters.append((name, "", segment == DOUBLE_STAR))
            else:
                out.append(segment)
            index += 1
            continue
        end = len(segments) if var.end is None else var.end
        own = segments[var.start : end]
        wildcards = [i for i, s in enumerate(own) if s in (STAR, DOUBLE_STAR)]
        for position, segment in enumerate(own):
            if segment not in (STAR, DOUBLE_STAR):
                out.append(segment)
                continue
            if len(wildcards) == 1 and position == 0:
                base = var.name
            else:
                base = _singular(own[position - 1]) if position > 0 else var.name
            name = _unique(base, taken)
            out.append("{" + name + "}")
            parameters.append((name, var.name, segment == DOUBLE_STAR))
        index = end
    return "/" + "/".join(out) + (":" + template.verb if template.verb else ""), parameters


def _singular(collection: str) -> str:
    if collection.endswith("ies"):
        return collection[:-3] + "y"
    if collection.endswith("s") and not collection.endswith("ss"):
        return collection[:-1]
    return collection + "_id"


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _resources(api: Api) -> ResourceRegistry:
    """Resource types and name patterns declared in the API's files (for `pattern` on references)."""
    registry = ResourceRegistry()
    for name in api.files:
        try:
            registry.add_file(api.pool.FindFileByName(name))
        except KeyError:
            continue
    return registry


class _Builder:
    def __init__(self, docs: dict[str, str], resources: ResourceRegistry) -> None:
        self.docs = docs
        self.resources = resources
        self.schemas: dict[str, Any] = {}

    def operation(
        self, binding: Binding, path_params: list[tuple[str, str, bool]], used: set[str]
    ) -> dict[str, Any]:
        rpc = binding.rpc
        method = rpc.descriptor
        service = method.containing_service
        text = self.docs.get(method.full_name, "")
        operation_id = _unique(f"{service.name}_{method.name}", used)
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "tags": [service.name],
            "summary": text.split("\n", 1)[0] if text else method.name,
            "description": (text + "\n\n" if text else "") + f"gRPC: `{rpc.path}`",
            "parameters": [self.path_parameter(binding, *p) for p in path_params]
            + list(self.query_parameters(binding)),
            "responses": self.responses(binding),
        }
        if rpc.client_streaming:
            operation["requestBody"] = {
                "required": False,
                "description": "A stream of requests: one JSON object per line (newline-delimited JSON).",
                "content": {"application/x-ndjson": {"schema": self.body_schema(binding)}},
            }
        elif binding.has_body:
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": self.body_schema(binding)}},
            }
        return operation

    def path_parameter(self, binding: Binding, name: str, field: str, rest: bool) -> dict[str, Any]:
        described = (
            f"Part of the request field `{field}` ({binding.template.source})."
            if field
            else "A path segment."
        )
        if rest:
            described += " May span several segments."
        return {
            "name": name,
            "in": "path",
            "required": True,
            "description": described,
            "schema": {"type": "string"},
        }

    def query_parameters(self, binding: Binding) -> Iterator[dict[str, Any]]:
        if binding.body == "*":
            return
        for names, field in _leaves(binding.rpc.descriptor.input_type, (), (), binding.bound):
            schema = self.field_schema(field)
            parameter: dict[str, Any] = {"name": ".".join(names), "in": "query", "schema": schema}
            text = self.docs.get(field.full_name)
            if text:
                parameter["description"] = text
            if field.is_repeated:
                parameter["style"], parameter["explode"] = "form", True
            yield parameter

    def body_schema(self, binding: Binding) -> dict[str, Any]:
        # An update (a PATCH with a field mask) sends only the fields it changes.
        partial = binding.field_mask is not None
        prefix = () if binding.body_path is None else binding.body_path.proto_path
        # Fields the path sets need not be in the body (the path wins over the body).
        from_path = [
            p.path.proto_path[len(prefix) :]
            for p in binding.path_fields
            if p.path.proto_path[: len(prefix)] == prefix and len(p.path.proto_path) > len(prefix)
        ]
        if binding.body_path is None:
            message = binding.rpc.descriptor.input_type
        elif binding.body_path.leaf.type == FD.TYPE_MESSAGE and not binding.body_path.leaf.is_repeated:
            message = f.message_type(binding.body_path.leaf)
        else:
            return self.field_schema(binding.body_path.leaf, partial)
        schema = self.ref(message, partial)
        return self.without_required(message, partial, from_path) if from_path else schema

    def without_required(
        self, message: d.Descriptor, partial: bool, paths: list[tuple[str, ...]]
    ) -> dict[str, Any]:
        """The schema of `message`, inline, with the fields at `paths` (from the URL) optional."""
        self.ref(message, partial)
        schema = dict(self.schemas[message.full_name + (PARTIAL_SUFFIX if partial else "")])
        properties = dict(schema["properties"])
        for field in message.fields:
            mine = [p[1:] for p in paths if p[0] == field.name]
            if not mine:
                continue
            deeper = [p for p in mine if p]
            if deeper and field.type == FD.TYPE_MESSAGE:
                nested = self.without_required(f.message_type(field), partial, deeper)
                properties[field.json_name] = nested
            elif len(deeper) < len(mine):
                value = dict(properties[field.json_name])
                value.pop("minLength", None)
                value["description"] = (value.get("description", "") + " Set by the URL path.").strip()
                properties[field.json_name] = value
                if field.json_name in schema.get("required", ()):
                    schema["required"] = [n for n in schema["required"] if n != field.json_name]
                    if not schema["required"]:
                        del schema["required"]
        schema["properties"] = properties
        return schema

    def responses(self, binding: Binding) -> dict[str, Any]:
        output = binding.rpc.descriptor.output_type
        schema = self.field_schema(binding.response_body.leaf) if binding.response_body else self.ref(output)
        error = {"$ref": _REF + ERROR_SCHEMA}
        if binding.rpc.server_streaming:
            line = {
                "type": "object",
                "properties": {"result": schema, "error": error},
                "description": "One line per message; a last `error` line if the stream fails.",
            }
            content: dict[str, Any] = {
                "application/x-ndjson": {"schema": line},
                "text/event-stream": {"schema": {"type": "string"}},
            }
        else:
            content = {"application/json": {"schema": schema}}
        return {
            "200": {"description": "OK", "content": content},
            "default": {"description": "An error", "content": {"application/json": {"schema": error}}},
        }

    def ref(self, message: d.Descriptor, partial: bool = False) -> dict[str, Any]:
        """A reference to the schema of `message` (`partial`: the variant without `required`)."""
        known = _WELL_KNOWN.get(message.full_name)
        if known is not None:
            return dict(known)
        name = message.full_name + (PARTIAL_SUFFIX if partial else "")
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursion stops here
            self.schemas[name] = self.message_schema(message, partial)
        return {"$ref": _REF + name}

    def message_schema(self, message: d.Descriptor, partial: bool = False) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in message.fields:
            schema = self.field_schema(field, partial)
            behaviors = set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])
            text = self.docs.get(field.full_name)
            if text:
                schema["description"] = text
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                schema["readOnly"] = True
            if field_behavior_pb2.INPUT_ONLY in behaviors:
                schema["writeOnly"] = True  # a password: sent, never returned
            if field_behavior_pb2.REQUIRED in behaviors and not partial:
                required.append(field.json_name)
                if field.type == FD.TYPE_STRING and not field.is_repeated:
                    schema["minLength"] = 1  # proto3 cannot tell "" from unset: empty is missing
            pattern = self.name_pattern(field)
            if pattern is not None:
                schema["pattern"] = pattern
            schema.update(_LIMITS.get(field.full_name, {}))
            properties[field.json_name] = schema
        # Unknown fields are refused (400), so the document says so.
        result: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        if required:
            result["required"] = required
        text = self.docs.get(message.full_name)
        if text:
            result["description"] = text
        if partial:
            result["description"] = (
                text + "\n\n" if text else ""
            ) + "As sent in an update: every field optional."
        return result

    def name_pattern(self, field: d.FieldDescriptor) -> str | None:
        """For a resource reference: the names it may hold (or empty, as "not set")."""
        if field.type != FD.TYPE_STRING or field.is_repeated:
            return None
        reference = field.GetOptions().Extensions[resource_pb2.resource_reference]
        if reference.type:
            patterns = self.resources.patterns(reference.type)
        elif reference.child_type:
            patterns = self.resources.parent_patterns(reference.child_type)
        else:
            return None
        alternatives = [pattern_regex(pattern) for pattern in patterns if pattern]
        return "^(" + "|".join(alternatives) + ")?$" if alternatives else None

    def field_schema(self, field: d.FieldDescriptor, partial: bool = False) -> dict[str, Any]:
        if f.is_map(field):
            entry = f.message_type(field)
            value = self.single(entry.fields_by_name["value"], partial)
            return {"type": "object", "additionalProperties": value}
        single = self.single(field, partial)
        if field.name == "page_size" and field.type in _INT32:
            single["minimum"] = 0  # AIP-158: a negative page size is INVALID_ARGUMENT
        return {"type": "array", "items": single} if field.is_repeated else single

    def single(self, field: d.FieldDescriptor, partial: bool = False) -> dict[str, Any]:
        kind = field.type
        if kind == FD.TYPE_MESSAGE or kind == FD.TYPE_GROUP:
            return self.ref(f.message_type(field), partial)
        if kind == FD.TYPE_ENUM:
            enum = field.enum_type
            assert enum is not None
            return {"type": "string", "enum": [v.name for v in enum.values], "title": enum.full_name}
        if kind in _INT32:
            return {"type": "integer", "format": "int32"}
        if kind in _UINT32:
            return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
        if kind in _INT64:
            unsigned = kind in (FD.TYPE_UINT64, FD.TYPE_FIXED64)
            return {
                "type": "string",
                "format": "uint64" if unsigned else "int64",
                "pattern": "^[0-9]+$" if unsigned else "^-?[0-9]+$",
            }
        if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            return {"type": "number", "format": "double" if kind == FD.TYPE_DOUBLE else "float"}
        if kind == FD.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == FD.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        return {"type": "string"}


def _leaves(
    message: d.Descriptor,
    json_path: tuple[str, ...],
    proto_path: tuple[str, ...],
    bound: frozenset[tuple[str, ...]],
    seen: tuple[str, ...] = (),
) -> Iterator[tuple[tuple[str, ...], d.FieldDescriptor]]:
    """The fields a query parameter can set: scalars, repeated scalars, URL-able well-known types."""
    for field in message.fields:
        proto = (*proto_path, field.name)
        if proto in bound:
            continue
        names = (*json_path, field.json_name)
        if f.is_map(field):
            continue
        if field.type != FD.TYPE_MESSAGE:
            yield names, field
            continue
        if field.is_repeated:
            continue
        nested = f.message_type(field)
        if nested.full_name in f.URL_MESSAGES:
            yield names, field
        elif nested.full_name not in seen and not nested.full_name.startswith("google.protobuf."):
            yield from _leaves(nested, names, proto, bound, (*seen, message.full_name, nested.full_name))
