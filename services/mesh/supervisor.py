"""`mesh up` and `mesh status`: run every service of the mesh file as its own process.

`up` checks the ports first (so a clash is reported by service and port with
nothing started), starts one `mesh serve <name> --replica K` process per
replica of each service (`passengers`, or `passengers-0`, `passengers-1`, ...), waits
until each reports SERVING, then (when the mesh file has a `[gateway]` table)
starts `mesh gateway` and waits for its `GET /healthz`, prints the table, streams the children's logs with
a service prefix, and on Ctrl-C or SIGTERM stops them all gracefully. Each
child also watches a pipe from the supervisor, so if the supervisor is killed
the children stop too instead of holding the ports.

The running mesh is described in `<data_dir>/mesh.json` for `mesh status`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from . import certs, health
from .config import MeshConfig, ServiceConfig
from .replicas import Replica, replicas_of

START_TIMEOUT = 30.0
GATEWAY = "gateway"
"""The member name of the REST bridge."""
_COLORS = ("36", "33", "35", "32", "34", "31", "96", "93")


@dataclass
class Member:
    """One process of the running mesh, as `mesh status` reports it."""

    service: str
    address: str
    pid: int | None
    health: str
    replica: int = 0
    """Which of the service's replicas (replicas.py); 0 for a single one."""


def state_file(config: MeshConfig) -> Path:
    return config.data_dir / "mesh.json"


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As grpc binds: connections of a mesh that just stopped (TIME_WAIT) do not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


class LogPrinter:
    """Prints children's JSON log lines as `service | time level message key=value`."""

    def __init__(self, names: Iterable[str], out: IO[str], raw: bool = False) -> None:
        names = list(names)
        self.width = max((len(n) for n in names), default=4)
        self.colors = {n: _COLORS[i % len(_COLORS)] for i, n in enumerate(names)}
        self.out = out
        self.raw = raw
        self.color = out.isatty() and not os.environ.get("NO_COLOR")
        self.lock = threading.Lock()

    def prefix(self, name: str) -> str:
        label = name.ljust(self.width)
        return f"\x1b[{self.colors.get(name, '0')}m{label}\x1b[0m | " if self.color else f"{label} | "

    def render(self, line: str) -> str:
        if self.raw:
            return line
        try:
            entry = json.loads(line)
        except ValueError:
            return line
        if not isinstance(entry, dict) or "msg" not in entry:
            return line
        ts = str(entry.pop("ts", ""))[11:23]
        level = str(entry.pop("level", "")).upper()
        msg = entry.pop("msg")
        exception = entry.pop("exception", None)
        for key in ("service", "logger"):
            entry.pop(key, None)
        extras = " ".join(f"{k}={_plain(v)}" for k, v in entry.items())
        text = f"{ts} {level:<7} {msg}" + (f"  {extras}" if extras else "")
        if exception:
            text += "\n" + str(exception)
        return text

    def write(self, name: str, line: str) -> None:
        text = self.render(line.rstrip("\n"))
        prefix = self.prefix(name)
        with self.lock:
            for part in text.split("\n"):
                self.out.write(prefix + part + "\n")
            self.out.flush()

    def pump(self, name: str, stream: IO[str]) -> threading.Thread:
        def run() -> None:
            for line in stream:
                self.write(name, line)

        thread = threading.Thread(target=run, name=f"log-{name}", daemon=True)
        thread.start()
        return thread


def _plain(value: Any) -> str:
    """A log field as an operator reads it: lists comma-joined, not Python reprs."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def gateway_health(address: str, timeout: float = 1.0) -> str:
    """The gateway's `GET /healthz` (which also checks its upstreams) as a health status."""
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=timeout) as response:
            return health.SERVING if response.status == 200 else health.NOT_SERVING
    except urllib.error.HTTPError:
        return health.NOT_SERVING
    except (OSError, ValueError):
        return health.DOWN


def format_table(members: Sequence[Member]) -> str:
    replicated = {m.service for m in members if m.replica}
    rows = [("SERVICE", "ADDRESS", "PID", "HEALTH")]
    rows += [
        (
            f"{m.service}-{m.replica}" if m.service in replicated else m.service,
            m.address,
            str(m.pid or "-"),
            m.health,
        )
        for m in members
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


class Supervisor:
    """Starts, watches and stops the processes of one mesh."""

    def __init__(
        self,
        config: MeshConfig,
        services: Sequence[ServiceConfig],
        out: IO[str],
        raw_logs: bool = False,
        gateway: bool = False,
        notes: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.notes = list(notes)
        """Lines printed under the table once everything is up (the development API key)."""
        self.services = list(services)
        self.replicas: list[Replica] = replicas_of(self.services)
        """One process each: `passengers`, or `passengers-0`, `passengers-1`, ... with `replicas = N`."""
        self.gateway = gateway
        """Also run the REST bridge, after the services are SERVING."""
        self.out = out
        names = [r.name for r in self.replicas] + ([GATEWAY] if gateway else [])
        self.printer = LogPrinter(names, out, raw_logs)
        self.children: dict[str, subprocess.Popen[str]] = {}
        self.pumps: list[threading.Thread] = []
        self.stopping = threading.Event()

    def say(self, message: str) -> None:
        with self.printer.lock:
            self.out.write(f"mesh: {message}\n")
            self.out.flush()

    def check_ports(self) -> list[str]:
        ports = [(r.name, r.service.host, r.port) for r in self.replicas]
        if self.gateway:
            ports.append((GATEWAY, self.config.gateway.host, self.config.gateway.port))
        return [
            f"{name}: port {port} on {host} is already in use (is a mesh running? try `mesh status`)"
            for name, host, port in ports
            if port and port_taken(host, port)
        ]

    def spawn(self, replica: Replica) -> subprocess.Popen[str]:
        return self.spawn_command(
            replica.name, ["serve", replica.service.name, "--replica", str(replica.index)]
        )

    def spawn_command(self, name: str, args: list[str]) -> subprocess.Popen[str]:
        env = dict(
            os.environ,
            MESH_CONFIG=str(self.config.source.resolve()),
            MESH_SUPERVISED="1",
            PYTHONUNBUFFERED="1",
        )
        child = subprocess.Popen(
            [sys.executable, "-m", "services.mesh.cli", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=str(self.config.source.resolve().parent),
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
        )
        assert child.stdout is not None
        self.pumps.append(self.printer.pump(name, child.stdout))
        return child

    def wait_serving(self) -> str | None:
        """None once every child is SERVING, else what went wrong."""
        failure = self.wait_healthy({r.name: r.address for r in self.replicas})
        if failure is None and self.gateway:
            self.children[GATEWAY] = self.spawn_command(GATEWAY, [GATEWAY])
            failure = self.wait_healthy({GATEWAY: self.config.gateway.address})
        return failure

    def wait_healthy(self, addresses: dict[str, str]) -> str | None:
        deadline = time.monotonic() + START_TIMEOUT
        pending = dict(addresses)
        while pending:
            for name, address in list(pending.items()):
                child = self.children[name]
                if child.poll() is not None:
                    return (
                        f"{name} exited with code {child.returncode} before it was serving (its log is above)"
                    )
                if _health(self.config, self._service_of(name), address, timeout=0.5) == health.SERVING:
                    del pending[name]
            if self.stopping.is_set():
                return "interrupted"
            if pending and time.monotonic() > deadline:
                return f"{', '.join(pending)} not SERVING after {START_TIMEOUT:.0f}s"
            if pending:
                time.sleep(0.1)
        return None

    def addresses(self) -> dict[str, str]:
        """Every member this supervisor runs, by name."""
        found = {r.name: r.address for r in self.replicas}
        if self.gateway:
            found[GATEWAY] = self.config.gateway.address
        return found

    def _service_of(self, name: str) -> str:
        """The service a member name (`passengers-1`) belongs to."""
        return next((r.service.name for r in self.replicas if r.name == name), name)

    def _replica_of(self, name: str) -> int:
        return next((r.index for r in self.replicas if r.name == name), 0)

    def members(self) -> list[Member]:
        return [
            Member(
                self._service_of(name),
                address,
                self.children[name].pid,
                _health(self.config, self._service_of(name), address),
                self._replica_of(name),
            )
            for name, address in self.addresses().items()
            if name in self.children
        ]

    def write_state(self) -> None:
        path = state_file(self.config)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "supervisor_pid": os.getpid(),
            "config": str(self.config.source.resolve()),
            "members": [
                {
                    "service": self._service_of(name),
                    "replica": self._replica_of(name),
                    "address": address,
                    "pid": self.children[name].pid,
                }
                for name, address in self.addresses().items()
                if name in self.children
            ],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)

    def stop_all(self) -> dict[str, int]:
        """Stop every child; returns the exit code of each that did not exit with 0."""
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_period + self.config.grace_period + 5
        for name, child in self.children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{name} did not stop in time; killing it")
                child.kill()
                child.wait()
        for pump in self.pumps:  # print the children's last lines before we say more
            pump.join(timeout=1.0)
        failed = {name: child.returncode for name, child in self.children.items() if child.returncode != 0}
        path = state_file(self.config)
        try:
            state = json.loads(path.read_text())
            if state.get("supervisor_pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass
        return failed

    def run(self) -> int:
        problems = self.check_ports()
        if problems:
            for problem in problems:
                print(f"mesh up: {problem}", file=sys.stderr)
            return 1
        previous = {
            sig: signal.signal(sig, lambda *_: self.stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for replica in self.replicas:
                self.children[replica.name] = self.spawn(replica)
            failure = self.wait_serving()
            if failure:
                if failure != "interrupted":
                    print(f"mesh up: {failure}; stopping the rest", file=sys.stderr)
                self.stop_all()
                return 0 if failure == "interrupted" else 1
            self.write_state()
            notes = "".join(f"\nmesh: {note}" for note in self.notes)
            self.say(
                "all services are SERVING\n"
                + format_table(self.members())
                + notes
                + "\nmesh: press Ctrl-C to stop"
            )
            while not self.stopping.wait(0.5):
                for name, child in self.children.items():
                    if child.returncode is None and child.poll() is not None:
                        self.say(f"{name} exited with code {child.returncode}; the rest keep running")
            self.say("stopping all services")
            failed = self.stop_all()
            codes = ", ".join(f"{name} exited with code {code}" for name, code in failed.items())
            self.say(f"stopped; {codes}" if failed else "stopped")
            return 1 if failed else 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def status(config: MeshConfig) -> list[Member]:
    """Every service of the mesh file, as it answers now."""
    pids: dict[tuple[str, int], int] = {}
    try:
        state = json.loads(state_file(config).read_text())
        if _alive(state.get("supervisor_pid")):
            pids = {
                (m["service"], m.get("replica", 0)): m["pid"]
                for m in state.get("members", [])
                if _alive(m.get("pid"))
            }
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    members = [
        Member(
            r.service.name,
            r.address,
            pids.get((r.service.name, r.index)),
            _health(config, r.service.name, r.address),
            r.index,
        )
        for r in replicas_of(config.services.values())
    ]
    if config.gateway.enabled:
        address = config.gateway.address
        members.append(Member(GATEWAY, address, pids.get((GATEWAY, 0)), gateway_health(address)))
    return members


def _health(config: MeshConfig, name: str, address: str, timeout: float = 1.0) -> str:
    """A member's health; with TLS on, asked as the `mesh` identity of a member that proves its name."""
    if name == GATEWAY:
        return gateway_health(address, timeout)
    credentials = certs.channel_credentials(config, "mesh")
    server = certs.server_name(config, name)
    return health.check(address, timeout=timeout, credentials=credentials, server_name=server)


def status_json(members: Sequence[Member]) -> str:
    return json.dumps([asdict(m) for m in members], indent=2)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
