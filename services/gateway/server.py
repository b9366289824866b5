"""Building and running the bridge: `mesh gateway [--upstream HOST:PORT ...] [--descriptor-set FILE]`.

Without `--upstream` the bridge fronts the mesh of the mesh file: the API is
this project's generated contracts (or `--descriptor-set`). With `--upstream`
it fronts any gRPC servers: the API comes from `--descriptor-set`, or else
from each upstream's reflection service, which also says which upstream
serves which service. Either way the calls go through the runtime's client
(upstream.py).

It serves with uvicorn on uvloop + httptools, the fastest pair here, behind the HTTP limits
of edge.py (header bytes, timeouts, open connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import grpc
import uvicorn
from google.protobuf import descriptor_pb2

from services.gateway.telemetry import HttpTracing, gateway_telemetry
from services.runtime import log
from services.runtime.config import GatewayConfig, MeshConfig, load_config
from services.runtime.errors import ConfigError
from services.runtime.server import run as run_process
from services.runtime.server import stop_when_supervisor_exits
from services.runtime.telemetry import Telemetry
from services.runtime.tokens import Verifier

from . import api as api_module
from . import openapi, routes, upstream_tls
from .app import Gateway, Page
from .edge import Edge
from .edge import protocol as edge_protocol
from .guard import KeyGuard
from .keys import KeyStore
from .pages import pages
from .upstream import direct, in_mesh
from .upstream_tls import UpstreamTls

_log = log.get_logger("rideshare.gateway")


@dataclass
class Options:
    """The command line of `mesh gateway`."""

    upstreams: Sequence[str] = ()
    descriptor_set: str | None = None
    listen: str | None = None
    """HOST:PORT; default: `[gateway]` host and port of the mesh file."""
    auth: bool = True
    upstream_tls: bool = False
    upstream_ca: str | None = None
    upstream_cert: str | None = None
    upstream_key: str | None = None
    upstream_server_name: str | None = None
    pages: Callable[[MeshConfig], Mapping[str, Page]] | None = None
    """More pages to serve in mesh mode, made from the config (`mesh gateway` adds `/mesh`)."""

    def tls(self, config: MeshConfig) -> UpstreamTls | None:
        """How to reach the `--upstream`s (upstream_tls.py); None: cleartext."""
        return upstream_tls.settings(
            config,
            tls=self.upstream_tls,
            ca=self.upstream_ca,
            cert=self.upstream_cert,
            key=self.upstream_key,
            server_name=self.upstream_server_name,
        )


Closer = Callable[[], Awaitable[None]]


async def load_api(
    options: Options, config: MeshConfig, tls: UpstreamTls | None = None
) -> tuple[api_module.Api, dict[str, list[str]] | None]:
    """The API, and (when reflection was asked) which services each upstream lists."""
    if not options.upstreams:
        if options.descriptor_set:
            return api_module.from_descriptor_set(options.descriptor_set), None
        packages = {s.package for s in config.services.values()}
        return api_module.from_generated(packages), None
    if options.descriptor_set and len(options.upstreams) == 1:
        return api_module.from_descriptor_set(options.descriptor_set), None
    served: dict[str, list[str]] = {}
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for address in options.upstreams:
        channel = (
            grpc.aio.secure_channel(address, tls.credentials(), tls.channel_options())
            if tls is not None
            else grpc.aio.insecure_channel(address)
        )
        try:
            services, protos = await api_module.reflected_files(channel)
        except api_module.ApiError as exc:
            raise api_module.ApiError(f"upstream {address}: {exc}") from None
        finally:
            await channel.close()
        served[address] = services
        for proto in protos:
            files.setdefault(proto.name, proto)
    if options.descriptor_set:
        return api_module.from_descriptor_set(options.descriptor_set), served
    return api_module.from_file_protos(files.values()), served


async def build(
    config: MeshConfig, options: Options, telemetry: Telemetry | None = None
) -> tuple[Gateway, Closer]:
    """The application and how to release what it holds (channels, databases).

    `telemetry` (services/gateway/telemetry.py) counts and traces the calls made upstream.
    """
    tls = options.tls(config) if options.upstreams else None
    loaded, served = await load_api(options, config, tls)
    upstreams = (
        direct(config, loaded, list(options.upstreams), served, tls, telemetry)
        if options.upstreams
        else in_mesh(config, loaded, telemetry)
    )
    closers: list[Closer] = [upstreams.close]
    table = routes.build(loaded)
    for problem in [*table.problems, *upstreams.problems]:
        _log.warning(f"route left out: {problem}", extra={"fields": {"event": "route_problem"}})
    docs = pages(openapi.document(loaded, table, api_keys=options.auth))
    if not options.upstreams and options.pages is not None:
        docs.update(options.pages(config))
    guard: KeyGuard | None = None
    if options.auth:
        store = KeyStore.open(config)
        guard = KeyGuard(store, config.gateway.rate_limit, Verifier(config))

        async def close_store() -> None:
            store.close()

        closers.append(close_store)
    gateway = Gateway(loaded, table, upstreams, config.gateway, guard=guard, pages=docs)

    async def close() -> None:
        for closer in closers:
            await closer()

    return gateway, close


def listen_address(config: MeshConfig, options: Options) -> tuple[str, int]:
    if not options.listen:
        return config.gateway.host, config.gateway.port
    host, _, port = options.listen.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ConfigError("--listen", "--listen", f"expected HOST:PORT, got {options.listen!r}") from None


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts so a taken port is our error, not its exit."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its signal handling (it re-raises SIGTERM after shutdown, exit -15; `run`
    installs handlers that stop it with exit code 0, like the services), and with the edge's
    timeouts checked on its tick (every 0.1 s)."""

    def __init__(self, config: uvicorn.Config, edge: Edge) -> None:
        super().__init__(config)
        self.edge = edge

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def on_tick(self, counter: int) -> bool:
        self.edge.sweep()
        return await super().on_tick(counter)


def uvicorn_server(app: Gateway | HttpTracing, grace: float, settings: GatewayConfig) -> uvicorn.Server:
    """uvicorn on httptools behind the limits of `[gateway]` (edge.py)."""
    edge = Edge(settings)
    config = uvicorn.Config(
        app,
        http=edge_protocol(edge),
        ws="none",  # nothing is served over WebSocket: an Upgrade is answered as plain HTTP
        proxy_headers=False,  # the client address is the TCP peer's: X-Forwarded-For is anyone's claim
        loop="none",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=settings.idle_timeout,  # type: ignore[arg-type]  # a float works (call_later)
        timeout_graceful_shutdown=max(1, int(grace)),
    )
    return _Server(config, edge)


def make_room_for(connections: int) -> None:
    """Each connection is a file descriptor: raise the soft limit to hold `max_connections` and
    the gateway's own files, as far as the hard limit allows (else the kernel refuses first)."""
    wanted = connections + _OWN_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    room = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if room > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (room, hard))
    if room < wanted:
        _log.warning(
            f"the open file limit ({room}) is below gateway.max_connections + {_OWN_FILES}; "
            "connections past it fail before the gateway can answer them",
            extra={"fields": {"event": "file_limit", "limit": room}},
        )


_OWN_FILES = 256
"""File descriptors the gateway needs besides its connections: channels, databases, logs."""


async def run(config: MeshConfig, options: Options) -> int:
    host, port = listen_address(config, options)
    make_room_for(config.gateway.max_connections)
    try:
        sock = bind(host, port)
    except OSError as exc:
        _log.error(
            f"cannot listen on {host}:{port}: {exc.strerror}; is another gateway running?",
            extra={"fields": {"event": "port_in_use", "port": port}},
        )
        return 3
    telemetry = gateway_telemetry(config, f"{host}:{port}")  # metrics on its admin port, spans
    try:
        gateway, close = await build(config, options, telemetry)
    except (api_module.ApiError, ConfigError) as exc:
        sock.close()
        telemetry.close()
        _log.error(str(exc), extra={"fields": {"event": "config_error"}})
        return 2
    server = uvicorn_server(HttpTracing(gateway, telemetry), config.grace_period, config.gateway)
    bound = sock.getsockname()[1]
    _log.info(
        f"gateway serving HTTP on {host}:{bound}",
        extra={"fields": {"event": "serving", "port": bound, "routes": len(gateway.table.bindings)}},
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop, server)
    if os.environ.get("MESH_SUPERVISED") == "1":
        stop_when_supervisor_exits(lambda: setattr(server, "should_exit", True))
    try:
        await server.serve(sockets=[sock])
    finally:
        await close()
        sock.close()
        telemetry.close()
    _log.info("stopped", extra={"fields": {"event": "stopped"}})
    return 0


def _stop(server: uvicorn.Server) -> None:
    """A first signal drains (grace period); a second one stops at once."""
    if server.should_exit:
        server.force_exit = True
    server.should_exit = True


def main(config_path: str | None, options: Options) -> int:
    """`mesh gateway`: run until SIGINT/SIGTERM; the exit code says how it ended."""
    try:
        config = load_config(config_path)
        log.configure("gateway", config.log_level)
    except ConfigError as exc:
        log.configure("gateway")
        _log.error(str(exc), extra={"fields": {"event": "config_error"}})
        return 2
    try:
        return run_process(run(config, options))
    except ConfigError as exc:
        _log.error(str(exc), extra={"fields": {"event": "config_error"}})
        return 2
    except KeyboardInterrupt:  # pragma: no cover - uvicorn's signal handler normally wins
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(None, Options()))
