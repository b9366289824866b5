"""`mesh up` and `mesh status`: run every service of the mesh file as its own process.

`up` checks the ports first (so a clash is reported by service and port with
nothing started), starts one `mesh serve <name>` process per service, waits
until each reports SERVING, prints the table, streams the children's logs with
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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from . import health
from .config import MeshConfig, ServiceConfig

START_TIMEOUT = 30.0
_COLORS = ("36", "33", "35", "32", "34", "31", "96", "93")


@dataclass
class Member:
    """One process of the running mesh, as `mesh status` reports it."""

    service: str
    address: str
    pid: int | None
    health: str


def state_file(config: MeshConfig) -> Path:
    return config.data_dir / "mesh.json"


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
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


def format_table(members: Sequence[Member]) -> str:
    rows = [("SERVICE", "ADDRESS", "PID", "HEALTH")]
    rows += [(m.service, m.address, str(m.pid or "-"), m.health) for m in members]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


class Supervisor:
    """Starts, watches and stops the processes of one mesh."""

    def __init__(
        self, config: MeshConfig, services: Sequence[ServiceConfig], out: IO[str], raw_logs: bool = False
    ) -> None:
        self.config = config
        self.services = list(services)
        self.out = out
        self.printer = LogPrinter([s.name for s in services], out, raw_logs)
        self.children: dict[str, subprocess.Popen[str]] = {}
        self.pumps: list[threading.Thread] = []
        self.stopping = threading.Event()

    def say(self, message: str) -> None:
        with self.printer.lock:
            self.out.write(f"mesh: {message}\n")
            self.out.flush()

    def check_ports(self) -> list[str]:
        return [
            f"{s.name}: port {s.port} on {s.host} is already in use (is a mesh running? try `mesh status`)"
            for s in self.services
            if s.port and port_taken(s.host, s.port)
        ]

    def spawn(self, service: ServiceConfig) -> subprocess.Popen[str]:
        env = dict(
            os.environ,
            MESH_CONFIG=str(self.config.source.resolve()),
            MESH_SUPERVISED="1",
            PYTHONUNBUFFERED="1",
        )
        child = subprocess.Popen(
            [sys.executable, "-m", "services.mesh.cli", "serve", service.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=str(self.config.source.resolve().parent),
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
        )
        assert child.stdout is not None
        self.pumps.append(self.printer.pump(service.name, child.stdout))
        return child

    def wait_serving(self) -> str | None:
        """None once every child is SERVING, else what went wrong."""
        deadline = time.monotonic() + START_TIMEOUT
        pending = {s.name: s for s in self.services}
        while pending:
            for name, service in list(pending.items()):
                child = self.children[name]
                if child.poll() is not None:
                    return (
                        f"{name} exited with code {child.returncode} before it was serving (its log is above)"
                    )
                if health.check(service.address, timeout=0.5) == health.SERVING:
                    del pending[name]
            if self.stopping.is_set():
                return "interrupted"
            if pending and time.monotonic() > deadline:
                return f"{', '.join(pending)} not SERVING after {START_TIMEOUT:.0f}s"
            if pending:
                time.sleep(0.1)
        return None

    def members(self) -> list[Member]:
        return [
            Member(s.name, s.address, self.children[s.name].pid, health.check(s.address))
            for s in self.services
            if s.name in self.children
        ]

    def write_state(self) -> None:
        path = state_file(self.config)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "supervisor_pid": os.getpid(),
            "config": str(self.config.source.resolve()),
            "members": [
                {"service": s.name, "address": s.address, "pid": self.children[s.name].pid}
                for s in self.services
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
        deadline = time.monotonic() + self.config.grace_period + 5
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
            for service in self.services:
                self.children[service.name] = self.spawn(service)
            failure = self.wait_serving()
            if failure:
                if failure != "interrupted":
                    print(f"mesh up: {failure}; stopping the rest", file=sys.stderr)
                self.stop_all()
                return 0 if failure == "interrupted" else 1
            self.write_state()
            self.say(
                "all services are SERVING\n" + format_table(self.members()) + "\nmesh: press Ctrl-C to stop"
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
    pids: dict[str, int] = {}
    try:
        state = json.loads(state_file(config).read_text())
        if _alive(state.get("supervisor_pid")):
            pids = {m["service"]: m["pid"] for m in state.get("members", []) if _alive(m.get("pid"))}
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return [
        Member(s.name, s.address, pids.get(s.name), health.check(s.address)) for s in config.services.values()
    ]


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
