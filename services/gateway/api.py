"""Where the bridge's API comes from: protobuf descriptors, from one of three places.

- `from_generated()`: this project's generated modules (every
  `rideshare.*.v1.*_pb2` under `generated/`), with the proto comments from
  `generated/rideshare/descriptors.binpb` (see `services.runtime.descriptors`);
- `from_descriptor_set(path)`: a `protoc --include_imports --descriptor_set_out` file;
- `from_reflection(channel)`: the upstream's gRPC server reflection service.

All three give an `Api`: the services to expose, a descriptor pool holding
them, and the file protos (with source info when the source had it) that the
OpenAPI document takes its descriptions from.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor as d
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

#: Services that are plumbing, not API: never routed.
_PLUMBING_PREFIXES = ("grpc.",)


class ApiError(Exception):
    """The descriptors could not be loaded (missing file, bad set, reflection failed)."""


@dataclass
class Api:
    """The services the bridge exposes and the descriptors behind them."""

    pool: descriptor_pool.DescriptorPool
    services: list[d.ServiceDescriptor]
    files: Mapping[str, descriptor_pb2.FileDescriptorProto]
    """File protos by name, comments included where the source had them."""

    def message_class(self, message: d.Descriptor) -> type[Message]:
        """The Python class of a message of this pool (the generated one for the default pool)."""
        return message_factory.GetMessageClass(message)


def _api_services(files: Iterable[d.FileDescriptor]) -> list[d.ServiceDescriptor]:
    services: list[d.ServiceDescriptor] = []
    for file in files:
        for service in file.services_by_name.values():
            if not service.full_name.startswith(_PLUMBING_PREFIXES):
                services.append(service)
    return services


def generated_modules() -> list[str]:
    """Every `rideshare.<name>.v1.<file>_pb2` module under the generated import root."""
    import rideshare

    found: set[str] = set()
    for root in rideshare.__path__:
        for module in Path(root).glob("*/v1/*_pb2.py"):
            found.add(f"rideshare.{module.parent.parent.name}.v1.{module.stem}")
    return sorted(found)


def from_generated(packages: Iterable[str] | None = None) -> Api:
    """This project's contracts; `packages` (e.g. `rideshare.passengers.v1`) narrows them."""
    from services.runtime.descriptors import source_files

    wanted = None if packages is None else set(packages)
    files: list[d.FileDescriptor] = []
    for name in generated_modules():
        module: Any = importlib.import_module(name)
        file: d.FileDescriptor = module.DESCRIPTOR
        if wanted is None or file.package in wanted:
            files.append(file)
    sources = source_files()
    protos: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for file in _with_dependencies(files):
        proto = sources.get(file.name)
        if proto is None:
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
        protos[file.name] = proto
    return Api(descriptor_pool.Default(), _api_services(files), protos)


def _with_dependencies(files: Iterable[d.FileDescriptor]) -> list[d.FileDescriptor]:
    seen: dict[str, d.FileDescriptor] = {}
    pending = list(files)
    while pending:
        file = pending.pop()
        if file.name not in seen:
            seen[file.name] = file
            pending.extend(file.dependencies)
    return list(seen.values())


def from_file_protos(protos: Iterable[descriptor_pb2.FileDescriptorProto]) -> Api:
    """An Api over a fresh pool built from file protos (dependencies included, any order)."""
    by_name = {p.name: p for p in protos}
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str, chain: tuple[str, ...]) -> None:
        if name in added:
            return
        if name in chain:
            raise ApiError(f"import cycle through {name}")
        proto = by_name.get(name)
        if proto is None:
            raise ApiError(f"{chain[-1] if chain else '?'} imports {name}, which the descriptors lack")
        for dependency in proto.dependency:
            add(dependency, (*chain, name))
        try:
            pool.Add(proto)
        except (TypeError, ValueError) as exc:
            raise ApiError(f"cannot load {name}: {exc}") from None
        added.add(name)

    for name in by_name:
        add(name, ())
    files = [pool.FindFileByName(name) for name in by_name]
    return Api(pool, _api_services(files), by_name)


def from_descriptor_set(path: str | Path) -> Api:
    """The services of a FileDescriptorSet file (`protoc --include_imports --descriptor_set_out`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ApiError(f"cannot read descriptor set {path}: {exc.strerror}") from None
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(data)
    except Exception as exc:  # protobuf raises DecodeError or its C twin
        raise ApiError(f"{path} is not a FileDescriptorSet: {exc}") from None
    return from_file_protos(files.file)


async def reflected_files(
    channel: grpc.aio.Channel, deadline: float = 10.0
) -> tuple[list[str], list[descriptor_pb2.FileDescriptorProto]]:
    """The services an upstream lists through server reflection, and every file they need."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask(request: Any) -> Any:
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=deadline)]
        if not responses:
            raise ApiError("the reflection service gave no answer")
        answer = responses[0]
        if answer.HasField("error_response"):
            raise ApiError(f"reflection: {answer.error_response.error_message}")
        return answer

    try:
        listing = await ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        services = [s.name for s in listing.list_services_response.service]
        files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

        def take(answer: Any) -> list[str]:
            missing: list[str] = []
            for raw in answer.file_descriptor_response.file_descriptor_proto:
                proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
                if proto.name not in files:
                    files[proto.name] = proto
                    missing.extend(proto.dependency)
            return missing

        pending: list[str] = []
        for service in services:
            if service.startswith(_PLUMBING_PREFIXES):
                continue
            answer = await ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=service))
            pending.extend(take(answer))
        while pending:
            name = pending.pop()
            if name not in files:
                answer = await ask(reflection_pb2.ServerReflectionRequest(file_by_filename=name))
                pending.extend(take(answer))
    except grpc.aio.AioRpcError as exc:
        raise ApiError(f"server reflection failed: {exc.code().name}: {exc.details()}") from None
    return services, list(files.values())
