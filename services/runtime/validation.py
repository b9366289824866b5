"""Request validation derived from the contracts, compiled once per request type.

The proto annotations already say what a valid request is, so no handler
repeats it:
- `(google.api.field_behavior) = REQUIRED` fields must be set (recursively,
  into each entry of a repeated message too, named `requests[3].notification`;
  except inside the resource of a request carrying an `update_mask`, where
  only the masked fields are sent);
- a string with `(google.api.resource_reference)` must match a pattern of the
  referenced resource (`passengers/{passenger}`), or of its parent for
  `child_type`; another service's resource is known from the file's
  `(google.api.resource_definition)`;
- `page_size` may not be negative; `request_id` is at most 128 characters.
Every violation is reported at once, each naming the field path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from google.api import field_behavior_pb2, resource_pb2
from google.protobuf import descriptor as d
from google.protobuf.message import Message

from .errors import FieldViolation, InvalidArgument

REQUIRED = field_behavior_pb2.REQUIRED
OUTPUT_ONLY = field_behavior_pb2.OUTPUT_ONLY
IDENTIFIER = field_behavior_pb2.IDENTIFIER
MAX_REQUEST_ID = 128
_MAX_DEPTH = 8

Check = Callable[[Message], Iterator[FieldViolation]]


def behaviors(field: d.FieldDescriptor) -> set[int]:
    """The field_behavior annotations of a field."""
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def pattern_regex(pattern: str) -> str:
    """`passengers/{passenger}` -> `passengers/[^/\\s]+` (an ID never holds a slash or white space)."""
    parts = []
    for segment in pattern.split("/"):
        parts.append(r"[^/\s]+" if segment.startswith("{") else re.escape(segment))
    return "/".join(parts)


class ResourceRegistry:
    """Resource types (`rideshare.local/Passenger`) and their name patterns."""

    def __init__(self) -> None:
        self._patterns: dict[str, list[str]] = {}

    def add_file(self, file: d.FileDescriptor, seen: set[str] | None = None) -> None:
        """Register every resource declared in `file` and the files it imports."""
        seen = set() if seen is None else seen
        if file.name in seen:
            return
        seen.add(file.name)
        for dep in file.dependencies:
            self.add_file(dep, seen)
        # Resources owned by another service are declared file-wide (AIP-123);
        # the owner's own message declaration wins if both are registered.
        for definition in file.GetOptions().Extensions[resource_pb2.resource_definition]:
            self._patterns.setdefault(definition.type, list(definition.pattern))
        for message in _all_messages(file.message_types_by_name.values()):
            resource = message.GetOptions().Extensions[resource_pb2.resource]
            if resource.type:
                self._patterns[resource.type] = list(resource.pattern)

    def patterns(self, resource_type: str) -> list[str]:
        return self._patterns.get(resource_type, [])

    def parent_patterns(self, child_type: str) -> list[str]:
        """`passengers/{p}/notifications/{n}` -> `passengers/{p}`."""
        return ["/".join(p.split("/")[:-2]) for p in self.patterns(child_type) if p.count("/") >= 3]

    def matcher(self, patterns: Iterable[str]) -> re.Pattern[str] | None:
        alternatives = [pattern_regex(p) for p in patterns if p]
        if not alternatives:
            return None
        return re.compile("(?:" + "|".join(alternatives) + ")")


def _all_messages(messages: Iterable[d.Descriptor]) -> Iterator[d.Descriptor]:
    for message in messages:
        yield message
        yield from _all_messages(message.nested_types)


def _is_set(message: Message, field: d.FieldDescriptor) -> bool:
    if field.is_repeated:
        return len(getattr(message, field.name)) > 0
    if field.has_presence:
        return message.HasField(field.name)
    return bool(getattr(message, field.name))


class RequestValidator:
    """All the checks for one request type; call it with a request to validate."""

    def __init__(self, descriptor: d.Descriptor, resources: ResourceRegistry) -> None:
        self.descriptor = descriptor
        self._resources = resources
        self._checks = list(self._compile(descriptor, "", partial=False, depth=0, top=True))

    def __call__(self, request: Message) -> None:
        if not self._checks:
            return
        violations = [v for check in self._checks for v in check(request)]
        if violations:
            raise InvalidArgument(violations)

    def _compile(
        self, message: d.Descriptor, prefix: str, *, partial: bool, depth: int, top: bool
    ) -> Iterator[Check]:
        if depth > _MAX_DEPTH or message.full_name.startswith("google.protobuf."):
            return
        has_mask = any(
            f.message_type is not None and f.message_type.full_name == "google.protobuf.FieldMask"
            for f in message.fields
        )
        for field in message.fields:
            path = prefix + field.name
            marks = behaviors(field)
            if OUTPUT_ONLY in marks:
                continue
            if REQUIRED in marks and not partial:
                yield _required(field, path)
            reference = field.GetOptions().Extensions[resource_pb2.resource_reference]
            if field.type == d.FieldDescriptor.TYPE_STRING and not field.is_repeated:
                patterns: list[str] = []
                if reference.type:
                    patterns = self._resources.patterns(reference.type)
                elif reference.child_type:
                    patterns = self._resources.parent_patterns(reference.child_type)
                elif IDENTIFIER in marks and partial:
                    # The name of a resource being updated must be well formed.
                    resource = message.GetOptions().Extensions[resource_pb2.resource]
                    patterns = list(resource.pattern)
                matcher = self._resources.matcher(patterns)
                if matcher is not None:
                    yield _matches(field, path, matcher, patterns)
            if top and field.name == "page_size" and field.type == d.FieldDescriptor.TYPE_INT32:
                yield _not_negative(field, path)
            if field.name == "request_id" and field.type == d.FieldDescriptor.TYPE_STRING:
                yield _max_length(field, path, MAX_REQUEST_ID)
            if field.message_type is not None and not field.is_repeated and not _is_map(field):
                nested = list(
                    self._compile(
                        field.message_type,
                        path + ".",
                        partial=partial or (top and has_mask),
                        depth=depth + 1,
                        top=False,
                    )
                )
                if nested:
                    yield _within(field, nested)
            elif field.message_type is not None and field.is_repeated and not _is_map(field):
                # A batch's entries (AIP-233): each checked like a request of its own, named by index.
                each = list(
                    self._compile(field.message_type, "", partial=partial, depth=depth + 1, top=False)
                )
                if each:
                    yield _each(field, path, each)


def _is_map(field: d.FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _required(field: d.FieldDescriptor, path: str) -> Check:
    def check(message: Message) -> Iterator[FieldViolation]:
        if not _is_set(message, field):
            yield FieldViolation(path, "is required", "REQUIRED")

    return check


def _matches(field: d.FieldDescriptor, path: str, matcher: re.Pattern[str], patterns: list[str]) -> Check:
    expected = " or ".join(f'"{p}"' for p in patterns)
    name = field.name

    def check(message: Message) -> Iterator[FieldViolation]:
        value = getattr(message, name)
        if value and not matcher.fullmatch(value):
            yield FieldViolation(
                path, f"{value!r} is not a resource name of the form {expected}", "MALFORMED_NAME"
            )

    return check


def _not_negative(field: d.FieldDescriptor, path: str) -> Check:
    name = field.name

    def check(message: Message) -> Iterator[FieldViolation]:
        if getattr(message, name) < 0:
            yield FieldViolation(path, "must not be negative", "NEGATIVE")

    return check


def _max_length(field: d.FieldDescriptor, path: str, limit: int) -> Check:
    name = field.name

    def check(message: Message) -> Iterator[FieldViolation]:
        if len(getattr(message, name)) > limit:
            yield FieldViolation(path, f"must be at most {limit} characters", "TOO_LONG")

    return check


def _within(field: d.FieldDescriptor, checks: list[Check]) -> Check:
    name = field.name

    def check(message: Message) -> Iterator[FieldViolation]:
        if message.HasField(name):
            child: Any = getattr(message, name)
            for inner in checks:
                yield from inner(child)

    return check


def _each(field: d.FieldDescriptor, path: str, checks: list[Check]) -> Check:
    name = field.name

    def check(message: Message) -> Iterator[FieldViolation]:
        for index, child in enumerate(getattr(message, name)):
            for inner in checks:
                for violation in inner(child):
                    named = f"{path}[{index}].{violation.field}"
                    yield FieldViolation(named, violation.description, violation.reason)

    return check
