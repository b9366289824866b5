"""The REST benchmark's backend: `bench.v1.Echo` served by a bare grpc.aio server, one process.

`python -m bench.echo` prints its bound port on stdout and serves until its
stdin closes (the bench is gone), SIGTERM, or `--max-seconds`.

The contract is the grpc-gateway anchor's `echo.proto`
(../shared/anchors/grpc-gateway/echo.proto): `Say(EchoRequest) returns
(EchoResponse)` bound to `POST /v1/echo` with `body: "*"`. It is built here as
a descriptor in code rather than compiled, so the bench needs no protoc and
no copy of the anchor's file; `bench/rest.py` checks that grpc-gateway (built
from the anchor's own file) and our bridge answer the same request with the
same JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from bench.servers import _announce, _stop_on_stdin_eof

FILE = "bench/v1/echo.proto"
SERVICE = "bench.v1.Echo"
METHOD = f"/{SERVICE}/Say"
HTTP_PATH = "/v1/echo"


def file_proto() -> descriptor_pb2.FileDescriptorProto:
    """`echo.proto` of the anchor, as a FileDescriptorProto."""
    FD = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name=FILE, package="bench.v1", syntax="proto3", dependency=["google/api/annotations.proto"]
    )
    for name in ("EchoRequest", "EchoResponse"):
        message = proto.message_type.add(name=name)
        message.field.add(name="message", number=1, type=FD.TYPE_STRING, label=FD.LABEL_OPTIONAL)
        message.field.add(name="n", number=2, type=FD.TYPE_INT64, label=FD.LABEL_OPTIONAL)
    method = proto.service.add(name="Echo").method.add(
        name="Say", input_type=".bench.v1.EchoRequest", output_type=".bench.v1.EchoResponse"
    )
    method.options.Extensions[annotations_pb2.http].CopyFrom(http_pb2.HttpRule(post=HTTP_PATH, body="*"))
    return proto


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """The contract with its imports, as `protoc --include_imports --descriptor_set_out` writes it."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file: Any) -> None:
        for dependency in file.dependencies:
            add(dependency)
        if file.name not in files:
            files[file.name] = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(files[file.name])

    add(annotations_pb2.DESCRIPTOR)
    files[FILE] = file_proto()
    return descriptor_pb2.FileDescriptorSet(file=list(files.values()))


def write_descriptor_set(path: Path) -> Path:
    path.write_bytes(descriptor_set().SerializeToString())
    return path


def message_classes() -> tuple[type[Any], type[Any]]:
    """EchoRequest and EchoResponse classes, from a pool of their own."""
    pool = descriptor_pool.DescriptorPool()
    for proto in descriptor_set().file:
        pool.Add(proto)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.v1.EchoRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.v1.EchoResponse")),
    )


async def serve(max_seconds: float) -> None:
    request_class, response_class = message_classes()

    async def say(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return response_class(message=request.message, n=request.n)

    handler = grpc.unary_unary_rpc_method_handler(
        say,
        request_deserializer=request_class.FromString,
        response_serializer=response_class.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Say": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)

    def stop() -> None:
        loop.call_soon_threadsafe(stopped.set)

    _stop_on_stdin_eof(stop)
    _announce(port)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopped.wait(), max_seconds)
    await server.stop(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bench.v1.Echo on a bare grpc.aio server.")
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.max_seconds))


if __name__ == "__main__":
    main()
