"""Running the bridge for real in tests: backends and uvicorn on a background event loop, HTTP from the test.

The test body speaks plain blocking HTTP (`http.client`), so the servers
cannot live on the test's own loop (it only runs inside `runner.run`). A
`BackgroundLoop` runs one event loop in a thread for the whole module; gRPC
backends and the gateway's uvicorn server both live there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from services.gateway import api as api_module
from services.gateway import server as gateway_server
from services.gateway.app import Gateway
from services.gateway.keys import KeyStore
from services.runtime.config import MeshConfig
from services.runtime.telemetry import Telemetry

T = TypeVar("T")
WAIT = 30.0
"""Bound on any one step run on the background loop."""


class BackgroundLoop:
    """An event loop in a daemon thread; `run(coro)` waits for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway-test-loop", daemon=True)
        self.thread.start()

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapper() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(WAIT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


@dataclass
class RunningGateway:
    """A gateway served by uvicorn on a free port."""

    gateway: Gateway
    port: int
    stop: Callable[[], Awaitable[None]]
    config: MeshConfig | None = None
    key: str | None = None
    """An API key every request sends, unless it sends its own `x-api-key`."""

    def new_key(self, name: str, scopes: frozenset[str] = frozenset(), rate: float = 1000.0) -> str:
        """A fresh API key with these scopes, in this gateway's key store (a rate tests never reach)."""
        assert self.config is not None
        store = KeyStore.open(self.config)
        try:
            return store.create(name, rate, int(rate), scopes)[1]
        finally:
            store.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        source: str = "127.0.0.1",
    ) -> Response:
        sent = {"x-api-key": self.key} if self.key else {}
        return request(self.port, method, path, body, {**sent, **(headers or {})}, source)


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> Response:
    """One HTTP request; a dict or list body is sent as JSON. `source`: the client's address (any of
    127.0.0.0/8 reaches the gateway on 127.0.0.1, as if from another machine)."""
    sent = dict(headers or {})
    data: bytes | None
    if body is None or isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body).encode()
        sent.setdefault("content-type", "application/json")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT, source_address=(source, 0))
    try:
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        connection.close()


async def start_gateway(
    config: MeshConfig, options: gateway_server.Options, telemetry: Telemetry | None = None
) -> RunningGateway:
    """Build the gateway as `mesh gateway` does and serve it with uvicorn on a free port."""
    gateway, close = await gateway_server.build(config, options, telemetry)
    sock = gateway_server.bind("127.0.0.1", 0)
    server = gateway_server.uvicorn_server(gateway, 0.5, config.gateway)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)

    async def stop() -> None:
        server.should_exit = True
        await task
        await close()
        sock.close()

    return RunningGateway(gateway, sock.getsockname()[1], stop, config)


def mesh_config(config: MeshConfig, **gateway: Any) -> MeshConfig:
    """The same mesh with other `[gateway]` values."""
    return dataclasses.replace(config, gateway=dataclasses.replace(config.gateway, **gateway))


# -- the test backend: the Kitchen (and the http.proto examples) of tests/gateway/protos -----------------


@dataclass
class Kitchen:
    """A grpc.aio server for the test contract, with a record of cancelled streams."""

    server: grpc.aio.Server
    port: int
    cancelled: asyncio.Event
    streams_started: asyncio.Event
    sums_ended: asyncio.Event
    """A Sum or RunningSum call ended, whatever ended it."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def start_kitchen(test_api: api_module.Api) -> Kitchen:
    """Serve every method of the test contract: echoes, failures on demand, and a counting stream."""
    pool = test_api.pool

    def cls(name: str) -> Any:
        return test_api.message_class(pool.FindMessageTypeByName(f"gatewaytest.v1.{name}"))

    cancelled = asyncio.Event()
    streams_started = asyncio.Event()
    sums_ended = asyncio.Event()

    async def echo(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        seen = [
            (f"seen-{k}", v)
            for k, v in context.invocation_metadata() or ()
            if not k.startswith(("grpc-", ":"))
        ]
        remaining = context.time_remaining()
        await context.send_initial_metadata(
            (*seen, ("deadline-ms", str(int((remaining or 0) * 1000))), ("bin-bin", b"\x00\x01"))
        )
        context.set_trailing_metadata((("trailer-key", "t"),))
        return request

    async def get_message(request: Any, context: Any) -> Any:
        return cls("Message")(text=request.name)

    async def get_thing(request: Any, context: Any) -> Any:
        return cls("Thing")(name=request.name, title="a thing", size=2**40, color=1)

    async def get_special(request: Any, context: Any) -> Any:
        return cls("Thing")(name="things/special", title="special")

    async def get_file(request: Any, context: Any) -> Any:
        return cls("File")(name=request.name, content=b"hi")

    async def probe(request: Any, context: Any) -> Any:
        return empty_pb2.Empty()

    async def fail(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort_with_status(_rich_status(request.code, request.message))

    async def count(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        streams_started.set()
        if request.fail_after < 0:
            await context.abort_with_status(_rich_status(9, "refused at once"))
        remaining = context.time_remaining()
        deadline = "none" if remaining is None else str(int(remaining * 1000))
        await context.send_initial_metadata((("stream-key", "s"), ("deadline-ms", deadline)))
        interval = request.interval.ToTimedelta().total_seconds()
        try:
            for n in range(1, request.count + 1):
                if request.fail_after and n > request.fail_after:
                    await context.abort_with_status(_rich_status(9, "counting failed"))
                yield cls("CountReply")(n=n)
                if interval:
                    await asyncio.sleep(interval)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def running_sum(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        context.add_done_callback(lambda _: sums_ended.set())
        reply = cls("SumReply")()
        async for request in requests:
            if request.value < 0:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"value {request.value} is negative")
            reply.total += request.value
            reply.count += 1
            reply.labels.append(request.label)
            yield reply

    async def sum_values(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        totals = [cls("SumReply")()]  # no requests: the empty sum
        async for total in running_sum(requests, context):
            totals[0] = total  # the last running total is the sum
        return totals[0]

    behaviours: dict[str, dict[str, Any]] = {
        "ExampleOne": {"GetMessage": get_message},
        "ExampleTwo": {"GetMessage": echo},
        "ExampleThree": {"UpdateMessage": echo},
        "ExampleFour": {"UpdateMessage": echo},
        "ExampleFive": {"GetMessage": echo},
        "ExampleSix": {"GetMessage": echo},
        "Kitchen": {
            "Echo": echo,
            "GetThing": get_thing,
            "GetSpecialThing": get_special,
            "ArchiveThing": get_thing,
            "UpdateThing": echo,
            "GetFile": get_file,
            "Probe": probe,
            "Fail": fail,
            "Count": count,
            "Plain": echo,
            "Sum": sum_values,
            "RunningSum": running_sum,
        },
    }
    server = grpc.aio.server()
    names = []
    for service_name, methods in behaviours.items():
        service = pool.FindServiceByName(f"gatewaytest.v1.{service_name}")
        names.append(service.full_name)
        handlers = {}
        for method_name, behaviour in methods.items():
            method = service.methods_by_name[method_name]
            request_class = test_api.message_class(method.input_type)
            response_class = test_api.message_class(method.output_type)
            make = {
                (False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler,
            }[method.client_streaming, method.server_streaming]
            handlers[method_name] = make(
                behaviour,
                request_deserializer=request_class.FromString,
                response_serializer=response_class.SerializeToString,
            )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server, pool=pool)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    for name in ("", *names):  # the mesh client asks for its service's name (mesh mode)
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Kitchen(server, port, cancelled, streams_started, sums_ended)


def _rich_status(code: int, message: str) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason="KITCHEN_FAILURE", domain="kitchen.test", metadata={"k": "v"})
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="code", description="asked for")]
    )
    status = status_pb2.Status(code=code, message=message)
    status.details.add().Pack(info)
    status.details.add().Pack(bad)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def write_gateway_mesh(directory: Path, services: str = "[services.passengers]\nport = 0\n") -> Path:
    path = directory / "mesh.toml"
    path.write_text(
        'host = "127.0.0.1"\ndata_dir = "data"\ngrace_period = "1s"\ndrain_period = "0s"\n\n'
        '[client]\ntimeout = "20s"\n\n'
        + services
        + '\n[gateway]\nport = 0\nmax_body_bytes = 4096\nmax_timeout = "30s"\ncors_origins = ["https://app.example"]\n'
        # A test machine may not run us for a while; the lag limit is tested in test_limits.py.
        'max_lag = "0s"\n',
        encoding="utf-8",
    )
    return path


# -- the whole mesh behind the gateway, keys on: signed-in passengers and drivers over REST -----------------


@contextlib.contextmanager
def whole_mesh(background: BackgroundLoop, directory: Path) -> Iterator[RunningGateway]:
    """Every service of the project (in-process, on free ports, as `mesh serve` builds them) behind the
    gateway with API keys, and a signing key for sessions, as `mesh up` makes it."""
    from services.mesh import signing
    from services.runtime.config import load_config
    from services.runtime.server import MeshServer, create_server

    from ..ports import free_ports
    from ..whole_mesh import SERVICES, mesh_text

    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    path = directory / "mesh.toml"
    path.write_text(mesh_text(ports), encoding="utf-8")
    config = load_config(path, env={})
    signing.create(config)
    servers: list[MeshServer] = []
    running: RunningGateway | None = None
    try:
        for name in SERVICES:
            server = background.run(create_server(config, name, port=ports[name]))
            background.run(server.start())
            servers.append(server)
        # A busy test machine may not run the loop for a while: no refusing for being behind.
        unhurried = mesh_config(config, max_lag=0.0)
        running = background.run(start_gateway(unhurried, gateway_server.Options()))
        yield running
    finally:
        if running is not None:
            background.run(running.stop())
        for server in reversed(servers):
            background.run(server.stop(0))


def bearer(session: dict[str, Any]) -> dict[str, str]:
    """The Authorization header of a session (the JSON of signIn / refreshSession)."""
    return {"authorization": f"Bearer {session['accessToken']}"}
