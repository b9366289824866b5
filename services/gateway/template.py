"""Path templates of `google.api.http` rules: parsing, and decoding what they capture.

    Template  = "/" Segments [ Verb ] ;
    Segments  = Segment { "/" Segment } ;
    Segment   = "*" | "**" | LITERAL | Variable ;
    Variable  = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb      = ":" LITERAL ;

A parsed template is a flat list of segments (a literal, `*` or `**`) plus the
variables as ranges over that list, so matching is a walk over segments (see
`routes.py`) and extracting a variable is a slice of the request's segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

#: One path segment of any content.
STAR = "*"
#: Zero or more path segments; only last (before the verb).
DOUBLE_STAR = "**"

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SLASH = re.compile(r"(%2[fF])")


class TemplateError(ValueError):
    """A path template that does not follow the grammar of google/api/http.proto."""

    def __init__(self, template: str, problem: str) -> None:
        super().__init__(f"path template {template!r}: {problem}")
        self.template = template
        self.problem = problem


@dataclass(frozen=True)
class Variable:
    """A `{field.path=...}` capture: segments `start` up to `end` (None: to the end of the path)."""

    field_path: tuple[str, ...]
    start: int
    end: int | None
    multi_segment: bool
    """Captures more than one segment (`{name=shelves/*}`, `**`): decoding keeps `%2F`."""

    @property
    def name(self) -> str:
        return ".".join(self.field_path)


@dataclass(frozen=True)
class Template:
    """A parsed path template."""

    source: str
    segments: tuple[str, ...]
    """Literal text, or `STAR` / `DOUBLE_STAR`."""
    variables: tuple[Variable, ...]
    verb: str | None

    def capture(self, parts: list[str]) -> dict[str, str]:
        """The decoded value of each variable, given the matched raw (still percent-encoded) segments."""
        values: dict[str, str] = {}
        for var in self.variables:
            if var.multi_segment:
                values[var.name] = decode_multi("/".join(parts[var.start : var.end]))
            else:
                values[var.name] = decode_single(parts[var.start])
        return values

    def expand(self, values: dict[str, str]) -> str:
        """The OpenAPI-style path, `{name}` per variable (documentation, not matching)."""
        out: list[str] = []
        index = 0
        starts = {v.start: v for v in self.variables}
        while index < len(self.segments):
            var = starts.get(index)
            if var is None:
                out.append(self.segments[index])
                index += 1
                continue
            out.append(values.get(var.name, "{" + var.name + "}"))
            index = len(self.segments) if var.end is None else var.end
        path = "/" + "/".join(out)
        return path + (":" + self.verb if self.verb else "")


def decode_single(raw: str) -> str:
    """A single-segment capture decodes every escape, `%2F` included; `+` stays `+`."""
    return unquote(raw) if "%" in raw else raw


def decode_multi(raw: str) -> str:
    """A multi-segment capture decodes every escape except `%2F`/`%2f`, which stay as they are."""
    if "%" not in raw:
        return raw
    pieces = _SLASH.split(raw)
    return "".join(piece if index % 2 else unquote(piece) for index, piece in enumerate(pieces))


def parse(source: str) -> Template:
    """Parse and check a template; raises `TemplateError` naming the problem."""
    if not source.startswith("/"):
        raise TemplateError(source, "must start with '/'")
    body, verb = _split_verb(source)
    parser = _Parser(source, body[1:])
    segments, variables = parser.segments_and_variables()
    for index, segment in enumerate(segments):
        if segment == DOUBLE_STAR and index != len(segments) - 1:
            raise TemplateError(source, "'**' may only be the last segment")
    names = [v.name for v in variables]
    if len(set(names)) != len(names):
        raise TemplateError(source, "a field is bound twice")
    return Template(source, tuple(segments), tuple(variables), verb)


def _split_verb(source: str) -> tuple[str, str | None]:
    """`/v1/{name=trips/*}:accept` -> ('/v1/{name=trips/*}', 'accept'); a ':' inside braces is not a verb."""
    colon = source.rfind(":")
    if colon < 0 or colon < source.rfind("/") or colon < source.rfind("}"):
        return source, None
    verb = source[colon + 1 :]
    if not verb or any(c in verb for c in "/{}*"):
        raise TemplateError(source, f"bad verb {verb!r}")
    return source[:colon], verb


class _Parser:
    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text = text
        self.pos = 0

    def fail(self, problem: str) -> TemplateError:
        return TemplateError(self.source, f"{problem} (at character {self.pos + 1})")

    def segments_and_variables(self) -> tuple[list[str], list[Variable]]:
        segments: list[str] = []
        variables: list[Variable] = []
        while True:
            if self.text.startswith("{", self.pos):
                variables.append(self.variable(segments))
            else:
                segments.append(self.segment())
            if self.pos == len(self.text):
                return segments, variables
            if self.text[self.pos] != "/":
                raise self.fail(f"unexpected {self.text[self.pos]!r}")
            self.pos += 1

    def segment(self) -> str:
        end = self.pos
        while end < len(self.text) and self.text[end] not in "/{}=":
            end += 1
        segment = self.text[self.pos : end]
        if not segment:
            raise self.fail("empty segment")
        if "*" in segment and segment not in (STAR, DOUBLE_STAR):
            raise self.fail(f"bad segment {segment!r}")
        self.pos = end
        return segment

    def variable(self, segments: list[str]) -> Variable:
        close = self.text.find("}", self.pos)
        if close < 0:
            raise self.fail("'{' without '}'")
        inner = self.text[self.pos + 1 : close]
        path, _, pattern = inner.partition("=")
        field_path = tuple(path.split("."))
        if not all(_IDENT.match(part) for part in field_path):
            raise self.fail(f"bad field path {path!r}")
        if "{" in inner:
            raise self.fail("variables cannot nest")
        start = len(segments)
        if "=" not in inner:
            segments.append(STAR)
        else:
            nested = _Parser(self.source, pattern)
            parts, inner_vars = nested.segments_and_variables()
            if inner_vars:
                raise self.fail("variables cannot nest")
            segments.extend(parts)
        self.pos = close + 1
        ends_with_rest = segments[-1] == DOUBLE_STAR
        count = len(segments) - start
        return Variable(
            field_path=field_path,
            start=start,
            end=None if ends_with_rest else len(segments),
            multi_segment=count > 1 or ends_with_rest,
        )
