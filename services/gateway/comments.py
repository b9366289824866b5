"""The `//` comments of the protos, by element full name, for the OpenAPI descriptions.

Comments live in a file proto's `source_code_info` under numeric paths
(message 4, field 2, nested message 3, enum 5/4, enum value 2, service 6,
method 2); this walks the file proto alongside those paths once and names
each comment after its element: `pkg.Message`, `pkg.Message.field`,
`pkg.Enum.VALUE`, `pkg.Service.Method`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf import descriptor_pb2

_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED, _NESTED_ENUM = 2, 3, 4
_VALUE, _METHOD = 2, 2

Path = tuple[int, ...]


def index(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, str]:
    """Full name -> comment text (leading comment, else trailing), for every file with source info."""
    found: dict[str, str] = {}
    for file in files:
        texts = {tuple(loc.path): _text(loc) for loc in file.source_code_info.location}
        texts = {path: text for path, text in texts.items() if text}
        if texts:
            _walk_file(file, texts, found)
    return found


def _text(location: descriptor_pb2.SourceCodeInfo.Location) -> str:
    raw = location.leading_comments or location.trailing_comments
    lines = [line.strip() for line in raw.strip().splitlines()]
    return "\n".join(lines).strip()


def _walk_file(
    file: descriptor_pb2.FileDescriptorProto, texts: Mapping[Path, str], out: dict[str, str]
) -> None:
    prefix = file.package + "." if file.package else ""
    for i, message in enumerate(file.message_type):
        _walk_message(message, (_MESSAGE, i), prefix, texts, out)
    for i, enum in enumerate(file.enum_type):
        _walk_enum(enum, (_ENUM, i), prefix, texts, out)
    for i, service in enumerate(file.service):
        name = prefix + service.name
        _put(out, name, texts, (_SERVICE, i))
        for j, method in enumerate(service.method):
            _put(out, f"{name}.{method.name}", texts, (_SERVICE, i, _METHOD, j))


def _walk_message(
    message: descriptor_pb2.DescriptorProto,
    path: Path,
    prefix: str,
    texts: Mapping[Path, str],
    out: dict[str, str],
) -> None:
    name = prefix + message.name
    _put(out, name, texts, path)
    for i, field in enumerate(message.field):
        _put(out, f"{name}.{field.name}", texts, (*path, _FIELD, i))
    for i, nested in enumerate(message.nested_type):
        _walk_message(nested, (*path, _NESTED, i), name + ".", texts, out)
    for i, enum in enumerate(message.enum_type):
        _walk_enum(enum, (*path, _NESTED_ENUM, i), name + ".", texts, out)


def _walk_enum(
    enum: descriptor_pb2.EnumDescriptorProto,
    path: Path,
    prefix: str,
    texts: Mapping[Path, str],
    out: dict[str, str],
) -> None:
    name = prefix + enum.name
    _put(out, name, texts, path)
    for i, value in enumerate(enum.value):
        _put(out, f"{name}.{value.name}", texts, (*path, _VALUE, i))


def _put(out: dict[str, str], name: str, texts: Mapping[Path, str], path: Path) -> None:
    text = texts.get(path)
    if text:
        out[name] = text
