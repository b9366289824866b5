"""Shared fixtures: a mesh file in a temp dir, one event loop per test, running passenger servers.

pytest-asyncio is not used: each test gets an `asyncio.Runner` (one loop for
the whole test, closed at teardown) and drives coroutines through it, so grpc
objects created in one step can be used in the next.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from rideshare.passengers.v1 import passengers_pb2_grpc

from services.runtime.config import MeshConfig, load_config
from services.runtime.server import MeshServer, Runtime, Service, create_server
from tests import postgres

T = TypeVar("T")

#: A one-service mesh; port 0 so a server started from it never takes a real port. No drain
#: period: a server stopped at teardown has no clients to send elsewhere (test_drain.py drains).
MESH_TOML = """\
host = "127.0.0.1"
data_dir = "data"
grace_period = "1s"
drain_period = "0s"

[client]
timeout = "20s"

[services.passengers]
port = 0
"""


def write_mesh_file(directory: Path, text: str = MESH_TOML) -> Path:
    path = directory / "mesh.toml"
    path.write_text(text, encoding="utf-8")
    return path


def with_port(config: MeshConfig, service: str, port: int) -> MeshConfig:
    """The same mesh with `service` reachable on `port` (a server bound to port 0)."""
    services = dict(config.services)
    services[service] = dataclasses.replace(services[service], port=port)
    return dataclasses.replace(config, services=services)


#: Test files that share a session-scoped mesh (`rideshare_mesh`); xdist runs them on one worker.
SHARED_MESH_FILES = frozenset({"tests/e2e/test_trip_flow.py", "tests/e2e/test_trip_failures.py"})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` (`make test`), except that files sharing a session mesh are one unit of work.

    A file runs whole on one worker, so its module-scoped meshes start once;
    a session-scoped mesh would otherwise start once per worker that uses it.
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedMeshes(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path: str = super()._split_scope(nodeid)
            return "rideshare_mesh" if path in SHARED_MESH_FILES else path

    return SharedMeshes(config, log)


@pytest.fixture
def mesh_file(tmp_path: Path) -> Path:
    return write_mesh_file(tmp_path)


@pytest.fixture
def mesh_config(mesh_file: Path) -> MeshConfig:
    return load_config(mesh_file, env={})


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as loop_runner:
        yield loop_runner


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


@dataclass(frozen=True)
class Failure:
    """A failed call as a client sees it: code, message and the rich status details."""

    code: grpc.StatusCode
    message: str
    status: status_pb2.Status | None
    info: error_details_pb2.ErrorInfo | None
    violations: list[error_details_pb2.BadRequest.FieldViolation]

    @property
    def fields(self) -> list[str]:
        return [v.field for v in self.violations]


def failure_of(error: grpc.aio.AioRpcError) -> Failure:
    status = rpc_status.from_call(error)
    info = None
    violations: list[error_details_pb2.BadRequest.FieldViolation] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(bad_request.field_violations)
    return Failure(error.code(), error.details() or "", status, info, violations)


class Loop:
    """Runs awaitables on the test's event loop."""

    def __init__(self, runner: asyncio.Runner) -> None:
        self.runner = runner

    def call(self, awaitable: Awaitable[T]) -> T:
        return self.runner.run(_await(awaitable))

    def fail(self, awaitable: Awaitable[Any]) -> Failure:
        """The failure of a call that must fail."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            self.call(awaitable)
        return failure_of(caught.value)

    def settled(self, check: Callable[[], T], what: str, patience: float = 30.0) -> T:
        """Run the loop until `check()` returns something truthy, and return it.

        A server logs a failed call after its status is on the way (the call
        wrapper's `finally`), so the client can have its answer first; a test
        reading that log line waits for it here, not for a time.
        """

        async def poll() -> T:
            async with asyncio.timeout(patience):
                while not (found := check()):  # noqa: ASYNC110  (a log line has no event to await)
                    await asyncio.sleep(0.01)
                return found

        try:
            return self.call(poll())
        except TimeoutError:
            raise AssertionError(f"gave up waiting for {what}") from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Every case skipped for want of PostgreSQL under one summary line, not one per test."""
    report = yield
    reason = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else ""
    if postgres.UNREACHABLE in reason:
        report.longrepr = (postgres.__file__, None, reason)
    return report


@pytest.fixture(scope="module")
def postgres_databases() -> Iterator[postgres.Databases]:
    """The PostgreSQL databases of one test module (skips, or fails under MESH_REQUIRE_POSTGRES=1,
    without a server); dropped when the module is done."""
    postgres.require()
    databases = postgres.Databases()
    yield databases
    databases.close()


@pytest.fixture(params=postgres.ENGINES)
def backends(
    request: pytest.FixtureRequest, tmp_path: Path, runner: asyncio.Runner
) -> Iterator[postgres.Backends]:
    """The test once per storage engine: `backends.open(migrations)` is a migrated, empty database."""
    databases = request.getfixturevalue("postgres_databases") if request.param == "postgres" else None
    opened = postgres.Backends(request.param, tmp_path, runner, databases)
    yield opened
    opened.close()


@pytest.fixture
def loop(runner: asyncio.Runner) -> Loop:
    return Loop(runner)


class Running(Loop):
    """A started MeshServer with a client channel to it."""

    def __init__(self, runner: asyncio.Runner, server: MeshServer, port: int) -> None:
        super().__init__(runner)
        self.server = server
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.channel = self.call(_open_channel(self.address))
        self.stub = passengers_pb2_grpc.PassengerServiceStub(self.channel)
        self.stopped = False

    def stop(self, grace: float = 0) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.call(self.channel.close())
        self.call(self.server.stop(grace))


async def _open_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address)


ServeFactory = Callable[..., Running]
Make = Callable[[Runtime], list[Service]]


@pytest.fixture
def serve(runner: asyncio.Runner, mesh_config: MeshConfig) -> Iterator[ServeFactory]:
    """Start a service of the mesh on a free port: `serve()`, `serve("passengers", config=...)`."""
    started: list[Running] = []

    async def build(name: str, config: MeshConfig, make: Make | None) -> MeshServer:
        if make is None:
            return await create_server(config, name, port=0)
        runtime = Runtime(config, config.service(name))
        return MeshServer(runtime, make(runtime), port=0)

    def start(
        name: str = "passengers", config: MeshConfig | None = None, make: Make | None = None
    ) -> Running:
        """`make(runtime)` builds the services instead of the service's own `create`."""
        server = runner.run(build(name, config or mesh_config, make))
        port = runner.run(server.start())
        running = Running(runner, server, port)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        running.stop()


@pytest.fixture
def passengers(serve: ServeFactory) -> Running:
    """A running passenger service with a fresh database."""
    return serve()
