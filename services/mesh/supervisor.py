"""`mesh up` and `mesh status`: run every service of the mesh file as its own process.

`up` checks the ports first (so a clash is reported by service and port with
nothing started), starts one `mesh serve <name> --replica K` process per
replica of each service (`passengers`, or `passengers-0`, `passengers-1`, ...), waits
until each reports SERVING, then (when the mesh file has a `[gateway]` table)
starts `mesh gateway` and waits for its `GET /healthz`, prints the table, streams the children's logs with
a service prefix, and on Ctrl-C or SIGTERM stops them all gracefully. Each
child also watches a pipe from the supervisor, so if the supervisor is killed
the children stop too instead of holding the ports.

Once the mesh is up, a child that exits on its own is restarted on the same
port after a backoff (`[supervisor]` in the mesh file: 0.5 s doubling to 30 s,
forgotten after 60 s up), like systemd's Restart=on-failure; one that exits
with 0 (it was asked to stop) stays down. A child that dies while the mesh is
still starting stops everything instead: a broken mesh file is not retried.

The running mesh, with each member's restarts and last exit, is described in
`<data_dir>/mesh.json` for `mesh status`.
"""

from __future__ import annotations

import contextlib
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
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from services.runtime import health, identity
from services.runtime.config import MeshConfig, ServiceConfig, SupervisorConfig
from services.runtime.replicas import Replica, replicas_of

START_TIMEOUT = 30.0
GATEWAY = "gateway"
"""The member name of the REST bridge."""
TICK = 0.2
"""How often the running supervisor looks at its children (so restarts are this late at most)."""
_COLORS = ("36", "33", "35", "32", "34", "31", "96", "93")
#: What a child's exit code means, as `mesh serve` and `mesh gateway` use them.
_EXIT_MEANINGS = {2: "bad configuration", 3: "port in use"}


@dataclass
class Member:
    """One process of the running mesh, as `mesh status` reports it."""

    service: str
    address: str
    pid: int | None
    health: str
    replica: int = 0
    """Which of the service's replicas (replicas.py); 0 for a single one."""
    restarts: int = 0
    """How many times `mesh up` started it again after it exited on its own."""
    last_exit: str | None = None
    """How its last process ended while the mesh ran ("killed by SIGKILL"); None if none did."""
    last_exit_at: str | None = None
    """When that was, as local ISO 8601 time."""


class Backoff:
    """The waits before restarting one member: doubling from `initial` up to `maximum`.

    A member that ran `reset_after` seconds before it exited starts over from
    `initial`, so a crash a day is restarted at once, a crash loop slows down.
    """

    def __init__(self, initial: float, maximum: float, reset_after: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.reset_after = reset_after
        self.failures = 0
        """Exits in a row without a long enough run in between."""

    @classmethod
    def of(cls, config: SupervisorConfig) -> Backoff:
        return cls(config.initial_backoff, config.max_backoff, config.reset_after)

    def next(self, uptime: float) -> float:
        """The wait before the next start of a member whose process ran `uptime` seconds (0: none ran)."""
        if uptime >= self.reset_after:
            self.failures = 0
        delay = min(self.maximum, self.initial * 2.0 ** min(self.failures, 64))
        self.failures += 1
        return delay


@dataclass
class Child:
    """One member as the supervisor runs it: its command, its current process, how it ended before."""

    name: str
    args: list[str]
    """`mesh` arguments that start it; the same each time, so it gets the same port."""
    host: str
    port: int
    backoff: Backoff
    process: subprocess.Popen[str] | None = None
    """None while it waits for a restart."""
    pump: threading.Thread | None = None
    started: float = 0.0
    """When the current process started (time.monotonic)."""
    serving: bool = False
    """Whether the current process has said SERVING."""
    restarts: int = 0
    restart_at: float | None = None
    """When to start it again (time.monotonic), while it waits."""
    last_exit: str | None = None
    last_exit_at: float | None = None
    """time.time() of the last exit."""
    left_down: int | None = None
    """The exit code of a process that was not restarted (clean exit, or `restart = "no"`)."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None and process.returncode is None else None


def describe_exit(code: int) -> str:
    """An exit code as an operator reads it: `killed by SIGKILL`, `exit code 3 (port in use)`."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    meaning = _EXIT_MEANINGS.get(code)
    return f"exit code {code}" + (f" ({meaning})" if meaning else "")


def _span(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _local_iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="seconds")


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
    rows = [("SERVICE", "ADDRESS", "PID", "HEALTH", "RESTARTS", "LAST EXIT")]
    rows += [
        (
            f"{m.service}-{m.replica}" if m.service in replicated else m.service,
            m.address,
            str(m.pid or "-"),
            m.health,
            str(m.restarts),
            _last_exit(m),
        )
        for m in members
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _last_exit(member: Member) -> str:
    if member.last_exit is None:
        return "-"
    when = member.last_exit_at or ""
    return f"{member.last_exit} at {when[11:19]}" if len(when) >= 19 else member.last_exit


class Supervisor:
    """Starts, watches, restarts and stops the processes of one mesh."""

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
        self.children: dict[str, Child] = {}
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

    def child(self, name: str, args: list[str], host: str, port: int) -> Child:
        """Register a member (not started yet)."""
        made = Child(name, args, host, port, Backoff.of(self.config.supervisor))
        self.children[name] = made
        return made

    def start(self, child: Child) -> None:
        child.process, child.pump = self.spawn_command(child.name, child.args)
        child.started = time.monotonic()
        child.serving = False
        child.restart_at = None

    def spawn_command(self, name: str, args: list[str]) -> tuple[subprocess.Popen[str], threading.Thread]:
        """`mesh <args>` as a child, and the thread printing its log."""
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
        pump = self.printer.pump(name, child.stdout)
        self.pumps = [p for p in self.pumps if p.is_alive()] + [pump]  # a crash loop adds one a restart
        return child, pump

    def wait_serving(self) -> str | None:
        """None once every child is SERVING, else what went wrong."""
        failure = self.wait_healthy([r.name for r in self.replicas])
        if failure is None and self.gateway:
            gateway = self.config.gateway
            self.start(self.child(GATEWAY, [GATEWAY], gateway.host, gateway.port))
            failure = self.wait_healthy([GATEWAY])
        return failure

    def wait_healthy(self, names: list[str]) -> str | None:
        deadline = time.monotonic() + START_TIMEOUT
        pending = list(names)
        while pending:
            for name in list(pending):
                child = self.children[name]
                assert child.process is not None
                if child.process.poll() is not None:
                    code = child.process.returncode
                    return f"{name} exited with code {code} before it was serving (its log is above)"
                if _health(self.config, self._service_of(name), child.address, timeout=0.5) == health.SERVING:
                    child.serving = True
                    pending.remove(name)
            if self.stopping.is_set():
                return "interrupted"
            if pending and time.monotonic() > deadline:
                return f"{', '.join(pending)} not SERVING after {START_TIMEOUT:.0f}s"
            if pending:
                time.sleep(0.1)
        return None

    def tend(self) -> None:
        """One look at every child: notice exits, restart those whose wait is over, see them serve."""
        changed = False
        for child in self.children.values():
            if self.stopping.is_set():
                break
            process = child.process
            if process is not None and process.returncode is None and process.poll() is not None:
                self.exited(child, process)
                changed = True
            elif process is None and child.restart_at is not None and time.monotonic() >= child.restart_at:
                changed = self.restart(child) or changed
            elif process is not None and not child.serving:
                self.check_back(child)
        if changed:
            self.write_state()

    def exited(self, child: Child, process: subprocess.Popen[str]) -> None:
        """A child exited on its own: say how, and schedule its restart if the policy wants one."""
        code = process.returncode
        uptime = time.monotonic() - child.started
        if child.pump is not None:  # its last lines (a traceback) before our verdict
            child.pump.join(timeout=1.0)
        _close(process, child.pump)
        child.last_exit = describe_exit(code)
        child.last_exit_at = time.time()
        how = (
            f"was {child.last_exit}"
            if code < 0
            else f"exited with code {child.last_exit.removeprefix('exit code ')}"
        )
        what = f"{child.name} (pid {process.pid}) {how} at {time.strftime('%H:%M:%S')}"
        what += f" after running {_span(uptime)}"
        policy = self.config.supervisor.restart
        if code == 0 or policy == "no":
            child.left_down = code
            why = "it stopped cleanly" if code == 0 else '[supervisor] restart = "no"'
            self.say(f"{what}; not restarting it ({why}); the rest keep running")
            return
        delay = child.backoff.next(uptime)
        child.process = None
        child.restart_at = time.monotonic() + delay
        self.say(f"{what}; restarting it in {delay:g}s (restart {child.restarts + 1})")

    def restart(self, child: Child) -> bool:
        """Start a waiting child again, unless someone else holds its port; True if it started."""
        if child.port and port_taken(child.host, child.port):
            delay = child.backoff.next(0.0)
            child.restart_at = time.monotonic() + delay
            self.say(
                f"{child.name}: port {child.port} on {child.host} is taken by another process; "
                f"trying again in {delay:g}s"
            )
            return False
        child.restarts += 1
        self.start(child)
        assert child.process is not None
        self.say(
            f"restarted {child.name} as pid {child.process.pid} on {child.address} (restart {child.restarts})"
        )
        return True

    def check_back(self, child: Child) -> None:
        """Say when a restarted child is SERVING again (its exit, if it dies first, is seen next tick)."""
        if _health(self.config, self._service_of(child.name), child.address, timeout=0.25) == health.SERVING:
            child.serving = True
            self.say(f"{child.name} is SERVING again (pid {child.pid})")

    def _service_of(self, name: str) -> str:
        """The service a member name (`passengers-1`) belongs to."""
        return next((r.service.name for r in self.replicas if r.name == name), name)

    def _replica_of(self, name: str) -> int:
        return next((r.index for r in self.replicas if r.name == name), 0)

    def members(self) -> list[Member]:
        return [
            Member(
                self._service_of(name),
                child.address,
                child.pid,
                _health(self.config, self._service_of(name), child.address),
                self._replica_of(name),
                child.restarts,
                child.last_exit,
                _local_iso(child.last_exit_at),
            )
            for name, child in self.children.items()
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
                    "address": child.address,
                    "pid": child.pid,
                    "restarts": child.restarts,
                    "last_exit": child.last_exit,
                    "last_exit_at": child.last_exit_at,
                }
                for name, child in self.children.items()
            ],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)

    def stop_all(self) -> dict[str, int]:
        """Stop every child; returns the exit code of each that did not stop cleanly.

        Cleanly: exit code 0, or killed by the SIGTERM we sent before it could
        handle it (a child still starting). A child waiting for a restart has no
        process to stop; one left down after a crash (`restart = "no"`) counts.
        """
        running = {name: c.process for name, c in self.children.items() if c.process is not None}
        for process in running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_period + self.config.grace_period + 5
        for name, process in running.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{name} did not stop in time; killing it")
                process.kill()
                process.wait()
        for pump in self.pumps:  # print the children's last lines before we say more
            pump.join(timeout=1.0)
        for name, process in running.items():
            _close(process, self.children[name].pump)
        failed = {
            name: process.returncode
            for name, process in running.items()
            if process.returncode not in (0, -signal.SIGTERM)
        }
        failed.update(
            {name: c.left_down for name, c in self.children.items() if c.left_down and name not in failed}
        )
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
                args = ["serve", replica.service.name, "--replica", str(replica.index)]
                self.start(self.child(replica.name, args, replica.service.host, replica.port))
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
            while not self.stopping.wait(TICK):
                self.tend()
            self.say("stopping all services")
            failed = self.stop_all()
            codes = ", ".join(f"{name} exited with code {code}" for name, code in failed.items())
            self.say(f"stopped; {codes}" if failed else "stopped")
            return 1 if failed else 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _close(process: subprocess.Popen[str], pump: threading.Thread | None) -> None:
    """Close our ends of an exited child's pipes (a crash loop must not leak them).

    Its output stays open while something (a process it left behind) still writes to it.
    """
    streams = [process.stdin] + ([process.stdout] if pump is None or not pump.is_alive() else [])
    for stream in streams:
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def status(config: MeshConfig) -> list[Member]:
    """Every service of the mesh file, as it answers now (with its restarts, if a supervisor runs it)."""
    members = [
        Member(r.service.name, r.address, None, _health(config, r.service.name, r.address), r.index)
        for r in replicas_of(config.services.values())
    ]
    if config.gateway.enabled:
        address = config.gateway.address
        members.append(Member(GATEWAY, address, None, gateway_health(address)))
    running = _running(config)
    for member in members:
        found = running.get((member.service, member.replica))
        if found is not None:
            pid, restarts, exit_, when = (
                found.get(k) for k in ("pid", "restarts", "last_exit", "last_exit_at")
            )
            member.pid = pid if _alive(pid) else None
            member.restarts = restarts if isinstance(restarts, int) else 0
            member.last_exit = exit_ if isinstance(exit_, str) else None
            member.last_exit_at = _local_iso(when) if isinstance(when, int | float) else None
    return members


def _running(config: MeshConfig) -> dict[tuple[str, int], dict[str, Any]]:
    """The members in the state file of a supervisor that still runs, by (service, replica)."""
    try:
        state = json.loads(state_file(config).read_text())
        if not _alive(state.get("supervisor_pid")):
            return {}
        return {(m["service"], m.get("replica", 0)): m for m in state.get("members", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _health(config: MeshConfig, name: str, address: str, timeout: float = 1.0) -> str:
    """A member's health; with TLS on, asked as the `mesh` identity of a member that proves its name."""
    if name == GATEWAY:
        return gateway_health(address, timeout)
    credentials = identity.channel_credentials(config, "mesh")
    server = identity.server_name(config, name)
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
