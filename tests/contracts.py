"""What a contract lets a caller say: the request fields that are neither OUTPUT_ONLY nor IDENTIFIER.

Used to pin that the money a service computes has no way in through a
request: such a field may exist in the resource a request carries, but only
as OUTPUT_ONLY, which the service ignores (AIP-203). IDENTIFIER is left out
too: a Create's resource is named by the server.
"""

from __future__ import annotations

from google.api import field_behavior_pb2
from google.protobuf import descriptor as d

#: Scalar kinds by their descriptor number: 9 -> "string".
_SCALARS = {
    getattr(d.FieldDescriptor, name): name.removeprefix("TYPE_").lower()
    for name in dir(d.FieldDescriptor)
    if name.startswith("TYPE_")
}
_IGNORED = {field_behavior_pb2.OUTPUT_ONLY, field_behavior_pb2.IDENTIFIER}

#: Messages a caller sets as a whole; their own fields are not listed.
WHOLE = {"google.protobuf.Duration", "google.protobuf.Timestamp", "google.type.LatLng", "google.type.Money"}


def settable(message: d.Descriptor, prefix: str = "") -> dict[str, str]:
    """Every field path a request of this type may set, with its type's full name (or "string", ...)."""
    paths: dict[str, str] = {}
    for field in message.fields:
        behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
        if _IGNORED.intersection(behaviors):
            continue
        path = prefix + field.name
        kind = field.message_type.full_name if field.message_type is not None else _SCALARS[field.type]
        if field.message_type is not None and kind not in WHOLE:
            paths.update(settable(field.message_type, path + "."))
        else:
            paths[path] = kind
    return paths
