"""One call turns servicers into a running gRPC server with everything a mesh service needs.

`create_server(runtime, services)` builds a `grpc.aio` server with the
services' handlers wrapped (validation, rich errors, logging, deadline
propagation; see `calls.py`), the standard health service with a status per
service, and server reflection for grpcurl. `serve(name)` is the process
entry point `mesh up` starts: it also stops gracefully on SIGTERM/SIGINT
(health goes NOT_SERVING, new calls are refused, in-flight calls get the grace
period to finish).

The server model is `grpc.aio`: see docs/architecture.md for the measurement.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import uvloop
from google.protobuf import descriptor as d
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from . import authz, drain, faults, identity, log, principal, storage
from .calls import CallWrapper
from .client import Clients
from .config import MeshConfig, ServiceConfig, load_config
from .descriptors import SourceReflectionServicer
from .errors import ConfigError, Unavailable
from .readiness import Readiness
from .replicas import check_replica
from .resources import Backend
from .telemetry import Telemetry, admin_port, serve_admin
from .validation import RequestValidator, ResourceRegistry

T = TypeVar("T")

_log = log.get_logger("rideshare.server")

#: A second server on a taken port must fail, not share it (grpc's default is SO_REUSEPORT).
SERVER_OPTIONS = (("grpc.so_reuseport", 0),)


@dataclass
class Service:
    """What a service package hands the runtime: a servicer and how to register it."""

    descriptor: d.ServiceDescriptor
    servicer: object
    register: Callable[[Any, Any], None]
    """The generated `add_XServiceServicer_to_server`."""
    on_start: Callable[[], Awaitable[None] | None] | None = None
    """Called once the databases are open, before the first call: start background work."""
    on_stop: Callable[[], Awaitable[None] | None] | None = None
    """Called after the server stopped, before the runtime closes the databases: stop background work."""
    on_stopping: Callable[[], Awaitable[None] | None] | None = None
    """Called when stopping begins, before the grace period: end open streams so they don't hold it."""


@dataclass
class Runtime:
    """What a service's `create(runtime)` gets: its config and the mesh around it."""

    config: MeshConfig
    service: ServiceConfig
    replica: int = 0
    """Which of the service's `replicas` this process is (replicas.py)."""
    clients: Clients = field(init=False)
    telemetry: Telemetry = field(init=False)
    """Metrics and spans of the calls this process serves and makes."""
    backends: list[Backend] = field(init=False, default_factory=list)
    """The databases `backend` made: opened before the server serves, closed after it stopped."""

    def __post_init__(self) -> None:
        self.telemetry = Telemetry(self.config, self.service.name)
        self.clients = Clients(self.config, caller=self.service.name, telemetry=self.telemetry)

    def data_path(self, filename: str) -> Path:
        """Where this service keeps a file of its own (`var/<service>/<filename>`)."""
        return self.config.data_dir / self.service.name / filename

    def backend(self, migrations: Path) -> Backend:
        """The service's database behind the kit's seam, as `[storage]` chooses it, with `migrations`
        (a directory of numbered SQL files): its SQLite file, or its PostgreSQL database."""
        made = storage.backend(self.config, self.service, migrations)
        self.backends.append(made)
        return made

    @property
    def log(self) -> Any:
        return log.get_logger(f"rideshare.{self.service.name}")


class PortInUse(Exception):
    """The service's port is taken by another process."""


class _Capture:
    """Stands in for a server to collect what generated `add_*_to_server` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The registered handlers below carry the same methods."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.handlers[service] = dict(handlers)


class MeshServer:
    """A started (or startable) service server and its health status."""

    def __init__(self, runtime: Runtime, services: Sequence[Service], port: int | None = None) -> None:
        self.runtime = runtime
        self.services = list(services)
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        self.health = drain.WatchedHealth()
        self.port = 0
        wanted = runtime.service.replica_port(runtime.replica) if port is None else port
        self._address = f"{runtime.service.host}:{wanted}"
        resources = ResourceRegistry()
        checks = authz.checks(runtime.config, runtime.service, [s.descriptor for s in self.services])
        self.faults = faults.faults_for(runtime.service, [s.descriptor for s in self.services])
        """Call path -> the fault mesh.toml injects into it (faults.py); usually empty."""
        wrapper_domain = runtime.service.domain
        for service in self.services:
            resources.add_file(service.descriptor.file)
        trust = principal.Trust.of(runtime.config)
        for service in self.services:
            validators = {
                f"/{service.descriptor.full_name}/{m.name}": RequestValidator(m.input_type, resources)
                for m in service.descriptor.methods
            }
            restricted = {
                f"/{service.descriptor.full_name}/{m.name}": labels
                for m in service.descriptor.methods
                if (labels := principal.restriction(m))
            }
            wrapper = CallWrapper(
                wrapper_domain,
                validators,
                checks,
                telemetry=runtime.telemetry,
                trust=trust,
                restricted=restricted,
            )
            capture = _Capture()
            service.register(service.servicer, capture)
            for name, handlers in capture.handlers.items():
                handlers = faults.inject_all(handlers, name, self.faults)
                wrapped = {m: wrapper.wrap(f"/{name}/{m}", h) for m, h in handlers.items()}
                self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, wrapped),))
                self.server.add_registered_method_handlers(name, wrapped)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [s.descriptor.full_name for s in self.services]
        self.readiness = Readiness(
            self.health, names, runtime.backends, runtime.service.storage.health_interval
        )
        """NOT_SERVING while a database is out of reach (readiness.py)."""
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            SourceReflectionServicer([*names, health.SERVICE_NAME, reflection.SERVICE_NAME]), self.server
        )

    async def start(self) -> int:
        """Bind, start, and report SERVING; returns the bound port."""
        credentials = identity.server_credentials(self.runtime.config, self.runtime.service.name)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(self._address)
            else:
                self.port = self.server.add_secure_port(self._address, credentials)
        except RuntimeError as exc:
            raise PortInUse(f"cannot listen on {self._address}: {exc}") from None
        if self.port == 0:
            raise PortInUse(f"cannot listen on {self._address}: address in use or unavailable")
        self.runtime.telemetry.start(f"{self.runtime.service.host}:{self.port}")
        for backend in self.runtime.backends:
            await backend.open()  # connected and migrated before the first call
        await _run_hooks(s.on_start for s in self.services)
        await self.server.start()
        for service in self.services:
            await self.health.set(service.descriptor.full_name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.readiness.start()
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first (so balancers move away), then finish in-flight calls."""
        await self.readiness.stop()
        await self.health.enter_graceful_shutdown()
        await drain.drain(self.health, self.runtime.config.drain_period)
        await _run_hooks(s.on_stopping for s in self.services)
        await self.server.stop(self.runtime.config.grace_period if grace is None else grace)
        await _run_hooks(s.on_stop for s in self.services)
        for backend in self.runtime.backends:
            await backend.close()
        await self.runtime.clients.close()
        self.runtime.telemetry.close()


async def _run_hooks(hooks: Iterable[Callable[[], Awaitable[None] | None] | None]) -> None:
    for hook in hooks:
        if hook is not None:
            result = hook()
            if result is not None:
                await result


def load_services(runtime: Runtime) -> list[Service]:
    """Import the service's module and call its `create(runtime)`."""
    wanted = runtime.service.module
    try:
        module = importlib.import_module(wanted)
    except ModuleNotFoundError as exc:
        # Only the configured module itself missing is a config error; a missing import inside it is a bug.
        if exc.name is None or not (wanted == exc.name or wanted.startswith(exc.name + ".")):
            raise
        raise ConfigError(
            str(runtime.config.source), f"services.{runtime.service.name}.module", f"no module named {wanted}"
        ) from None
    create = getattr(module, "create", None)
    if create is None:
        raise ConfigError(
            str(runtime.config.source),
            f"services.{runtime.service.name}.module",
            f"{runtime.service.module} has no create(runtime) function",
        )
    made = create(runtime)
    return list(made) if isinstance(made, list | tuple) else [made]


async def create_server(
    config: MeshConfig, name: str, port: int | None = None, replica: int = 0
) -> MeshServer:
    """The server for service `name` (replica `replica`), not yet started (`port=0` picks a free port)."""
    runtime = Runtime(config, config.service(name), replica)
    return MeshServer(runtime, load_services(runtime), port)


async def _serve(config: MeshConfig, name: str, port: int | None, replica: int = 0) -> int:
    server = await create_server(config, name, port, replica)
    if port is None and replica:
        port = server.runtime.service.replica_port(replica)
    try:
        bound = await server.start()
    except Unavailable as exc:  # its database: the supervisor starts it again after a backoff
        _log.error(str(exc), extra={"fields": {"event": "storage_unavailable", **exc.metadata}})
        await server.stop(0)
        return 4
    except PortInUse:
        wanted = port if port is not None else server.runtime.service.port
        _log.error(
            f"port {wanted} is already in use; is another mesh running? (service {name})",
            extra={"fields": {"event": "port_in_use", "port": wanted}},
        )
        return 3
    _log.info(
        f"serving {name} on {server.runtime.service.host}:{bound}",
        extra={
            "fields": {
                "event": "serving",
                "port": bound,
                "replica": replica,
                "services": [s.descriptor.full_name for s in server.services],
            }
        },
    )
    service = server.runtime.service
    serve_admin(server.runtime.telemetry, admin_port(service, port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if os.environ.get("MESH_SUPERVISED") == "1":
        stop_when_supervisor_exits(stop.set)
    await stop.wait()
    _log.info(
        "stopping: draining in-flight calls",
        extra={"fields": {"event": "stopping", "grace_s": config.grace_period}},
    )
    await server.stop()
    _log.info("stopped", extra={"fields": {"event": "stopped"}})
    return 0


def stop_when_supervisor_exits(stop: Callable[[], None]) -> None:
    """`mesh up` holds a mesh process's stdin open; EOF means it is gone, so `stop` rather than linger."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            stop()

    loop.add_reader(0, readable)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a process's main coroutine on uvloop, as every mesh process (the gateway too) does.

    grpc.aio serves ~7-10 % more calls per core on uvloop than on asyncio's own
    loop (DESIGN.md; docs/benchmarks.md section 1 for the runtime's figure).
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def serve(name: str, config_path: str | None = None, port: int | None = None, replica: int = 0) -> int:
    """Run one service (replica `replica`) until SIGTERM/SIGINT; the exit code says how it ended."""
    try:
        config = load_config(config_path)
        log.configure(name, config.log_level)
        check_replica(config.service(name), replica)
    except ConfigError as exc:
        log.configure(name)
        _log.error(str(exc), extra={"fields": {"event": "config_error"}})
        return 2
    try:
        return run(_serve(config, name, port, replica))
    except ConfigError as exc:
        _log.error(str(exc), extra={"fields": {"event": "config_error"}})
        return 2
    except KeyboardInterrupt:  # pragma: no cover - the signal handler normally wins
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve(sys.argv[1]))
