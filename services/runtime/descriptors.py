"""The contracts with their comments, for reflection and documentation.

Generated `_pb2` modules carry descriptors without source info, so the `//`
comments of the protos are lost at run time. `mesh generate` also writes
`generated/rideshare/descriptors.binpb` (a FileDescriptorSet of our protos and their
imports, with `--include_source_info`); this module serves it:
- `SourceReflectionServicer` answers grpcurl's reflection requests with those
  richer descriptors, so `grpcurl describe` shows the comments;
- `comments(file)` maps element paths to comments for generated documentation.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

DESCRIPTOR_SET_NAME = "descriptors.binpb"


def descriptor_set_path() -> Path | None:
    """Where the generated descriptor set lives (next to the `rideshare` stubs)."""
    import rideshare

    for root in rideshare.__path__:
        candidate = Path(root) / DESCRIPTOR_SET_NAME
        if candidate.exists():
            return candidate
    return None


@functools.cache
def source_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Our proto files and their imports by name (`rideshare/trips/v1/trips.proto`), with comments."""
    path = descriptor_set_path()
    if path is None:
        return {}
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    return {f.name: f for f in files.file}


class SourceReflectionServicer(ReflectionServicer):  # type: ignore[misc]
    """grpcio's reflection, answering with descriptors that keep the proto comments."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        # protobuf's pool does not find methods (`pkg.Service.Method`) or enum values by
        # name, so `grpcurl describe pkg.Service.Method` would fail: look up the parent.
        response = super()._file_containing_symbol(request, fully_qualified_name)
        parent = fully_qualified_name.rpartition(".")[0]
        if response.HasField("error_response") and parent:
            response = super()._file_containing_symbol(request, parent)
        return response

    async def ServerReflectionInfo(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        files = source_files()
        async for response in super().ServerReflectionInfo(request_iterator, context):
            if response.HasField("file_descriptor_response") and files:
                answer = response.file_descriptor_response.file_descriptor_proto
                for index, serialized in enumerate(answer):
                    name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
                    if name in files:
                        answer[index] = files[name].SerializeToString()
            yield response
