"""`mesh up`: run every member of the mesh file as its own process, restart what crashes, stop them all.

It checks the ports first (a clash is reported by service and port, nothing
starts), starts one `mesh serve <name> --replica K` per replica in order, waits
for each to say SERVING, then starts `mesh gateway` (with a `[gateway]` table)
and waits for it; on Ctrl-C or SIGTERM it stops them in reverse order, each
within its grace period. Children run in their own session (Ctrl-C reaches
only us) and watch our pipe on their stdin: if we are killed, they stop.

Once the mesh is up, a child that exits on its own is restarted on its port
after a backoff (`[supervisor]`), like systemd's Restart=on-failure; one that
exits with 0 (asked to stop) stays down. A child that dies while the mesh is
still starting stops everything: a broken mesh file is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO

from services.runtime.config import MeshConfig, ServiceConfig, SupervisorConfig
from services.runtime.replicas import replicas_of

from . import status
from .health import DOWN, GATEWAY, SERVING, until_serving
from .logs import LINE_LIMIT, LogPrinter

START_TIMEOUT = 30.0
"""How long a member may take to say SERVING while the mesh starts."""
#: What a child's exit code means, as `mesh serve` and `mesh gateway` use them.
_EXIT_MEANINGS = {2: "bad configuration", 3: "port in use"}


class NotServing(Exception):
    """A member of a starting mesh exited or did not say SERVING in time: `mesh up` gives up."""


@dataclass
class Backoff:
    """The waits before restarting one member: doubling from `initial` up to `maximum`.

    A member that ran `reset_after` seconds before it exited starts over from
    `initial`, so a crash a day is restarted at once, a crash loop slows down.
    """

    initial: float
    maximum: float
    reset_after: float
    failures: int = 0
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


@dataclass(kw_only=True)
class Child(status.Member):
    """A member as the supervisor runs it: what `mesh status` shows, plus its process and backoff."""

    name: str
    """`passengers`, `passengers-1`, `gateway`."""
    host: str
    port: int
    backoff: Backoff
    process: asyncio.subprocess.Process | None = None
    """None before it starts, while it waits for a restart, and once it is left down."""
    logs: asyncio.Task[None] | None = None
    """The task printing the current process's output."""
    started: float = 0.0
    """When the current process started (time.monotonic)."""
    left_down: int | None = None
    """The exit code of a process that was not restarted (clean exit, or `restart = "no"`)."""

    @property
    def args(self) -> list[str]:
        """`mesh` arguments that start it; the same each time, so it gets the same port."""
        if self.service == GATEWAY:
            return [GATEWAY]
        return ["serve", self.service, "--replica", str(self.replica)]


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


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As grpc binds: connections of a mesh that just stopped (TIME_WAIT) do not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


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

        def child(name: str, service: str, replica: int, host: str, port: int) -> Child:
            address, backoff = f"{host}:{port}", Backoff.of(config.supervisor)
            return Child(
                service, address, None, DOWN, replica, name=name, host=host, port=port, backoff=backoff
            )

        replicas = [
            child(r.name, r.service.name, r.index, r.service.host, r.port) for r in replicas_of(services)
        ]
        edge = [child(GATEWAY, GATEWAY, 0, config.gateway.host, config.gateway.port)] if gateway else []
        self.children = {c.name: c for c in replicas + edge}
        """In start order."""
        self.printer = LogPrinter(self.children, out, raw_logs)
        self.stopping = asyncio.Event()
        """Set by Ctrl-C or SIGTERM."""

    def run(self) -> int:
        """`mesh up` from start to stop; the exit code."""
        taken = [c for c in self.children.values() if c.port and port_taken(c.host, c.port)]
        hint = "is a mesh running? try `mesh status`"
        for c in taken:
            print(f"mesh up: {c.name}: port {c.port} on {c.host} is already in use ({hint})", file=sys.stderr)
        return 1 if taken else asyncio.run(self.main())

    async def main(self) -> int:
        """Run the mesh until Ctrl-C or SIGTERM (they cancel `supervise`), then stop it."""
        supervising = asyncio.create_task(self.supervise())
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, supervising.cancel)
        try:
            await supervising
        except asyncio.CancelledError:
            pass
        except NotServing as failure:
            print(f"mesh up: {failure}; stopping the rest", file=sys.stderr)
            await self.stop_all()
            return 1
        self.printer.say("stopping all services")
        failed = await self.stop_all()
        codes = ", ".join(f"{name} exited with code {code}" for name, code in failed.items())
        self.printer.say(f"stopped; {codes}" if failed else "stopped")
        return 1 if failed else 0

    def waves(self) -> list[list[Child]]:
        """The children as they start: every service at once, then the gateway (it needs them up)."""
        services = [c for c in self.children.values() if c.name != GATEWAY]
        return [services, *([[self.children[GATEWAY]]] if GATEWAY in self.children else [])]

    async def supervise(self) -> None:
        """Start the mesh wave by wave, then tend every member until cancelled."""
        for wave in self.waves():
            for child in wave:
                await self.start(child)
            await self.ready(wave)
        self.write_state()
        notes = "".join(f"\nmesh: {note}" for note in self.notes)
        table = status.format_table(list(self.children.values()))
        self.printer.say(f"all services are SERVING\n{table}{notes}\nmesh: press Ctrl-C to stop")
        await asyncio.gather(*map(self.tend, self.children.values()))
        await asyncio.Event().wait()  # every member is left down: wait for Ctrl-C all the same

    async def start(self, child: Child) -> None:
        """`mesh <args>` as a child: its own session, our pipe on its stdin, its output printed."""
        source = self.config.source.resolve()
        env = {**os.environ, "MESH_CONFIG": str(source), "MESH_SUPERVISED": "1", "PYTHONUNBUFFERED": "1"}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "services.mesh.cli", *child.args),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=str(source.parent),
            start_new_session=True,
            limit=LINE_LIMIT,
        )
        assert process.stdout is not None
        child.process, child.pid, child.health = process, process.pid, DOWN
        child.logs = asyncio.create_task(self.printer.pump(child.name, process.stdout))
        child.started = time.monotonic()

    async def ready(self, children: Sequence[Child]) -> None:
        """Return once every child says SERVING; raise NotServing with what went wrong first."""
        waits = {asyncio.create_task(self.serving(c)): c for c in children}
        try:
            async with asyncio.timeout(START_TIMEOUT):
                for next_one in asyncio.as_completed(waits):
                    failure = await next_one
                    if failure is not None:
                        raise NotServing(failure)
        except TimeoutError:
            late = ", ".join(c.name for wait, c in waits.items() if not wait.done())
            raise NotServing(f"{late} not SERVING after {START_TIMEOUT:.0f}s") from None
        finally:
            for wait in waits:
                wait.cancel()

    async def serving(self, child: Child) -> str | None:
        """None once `child` says SERVING; if it exits first, what to say about it."""
        process = child.process
        assert process is not None
        up = asyncio.create_task(until_serving(self.config, child.service, child.address))
        down = asyncio.create_task(process.wait())
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
            down.cancel()
        if down.done() and not down.cancelled():
            return (
                f"{child.name} exited with code {process.returncode} before it was serving (its log is above)"
            )
        up.result()  # raises what went wrong, if anything did
        child.health = SERVING
        return None

    async def tend(self, child: Child) -> None:
        """Follow one member from SERVING on: when it exits, say how, and start it again if it should."""
        while (process := child.process) is not None:
            code = await process.wait()
            await self.reap(child)
            delay = self.exited(child, process.pid, code)
            self.write_state()
            if delay is None:
                return
            while delay is not None:  # the backoff, then for as long as another process holds the port
                await asyncio.sleep(delay)
                delay = self.blocked(child)
            child.restarts += 1
            await self.start(child)
            self.printer.say(
                f"restarted {child.name} as pid {child.pid} on {child.address} (restart {child.restarts})"
            )
            self.write_state()
            if await self.serving(child) is None:
                self.printer.say(f"{child.name} is SERVING again (pid {child.pid})")

    async def reap(self, child: Child) -> None:
        """After a child exited: let its last lines (a traceback) print; close our end of its stdin."""
        if child.logs is not None:
            await asyncio.wait([child.logs], timeout=1.0)
        if child.process is not None and child.process.stdin is not None:
            child.process.stdin.close()

    def exited(self, child: Child, pid: int, code: int) -> float | None:
        """A child exited on its own: say how; the wait before its restart, None if it stays down."""
        uptime = time.monotonic() - child.started
        child.process, child.pid, child.health = None, None, DOWN
        child.last_exit = describe_exit(code)
        child.last_exit_at = datetime.now().astimezone().isoformat(timespec="seconds")
        how = f"was {child.last_exit}" if code < 0 else f"exited with {child.last_exit.removeprefix('exit ')}"
        what = f"{child.name} (pid {pid}) {how} at {time.strftime('%H:%M:%S')} after running {_span(uptime)}"
        if code == 0 or self.config.supervisor.restart == "no":
            child.left_down = code
            why = "it stopped cleanly" if code == 0 else '[supervisor] restart = "no"'
            self.printer.say(f"{what}; not restarting it ({why}); the rest keep running")
            return None
        delay = child.backoff.next(uptime)
        self.printer.say(f"{what}; restarting it in {delay:g}s (restart {child.restarts + 1})")
        return delay

    def blocked(self, child: Child) -> float | None:
        """If another process holds the child's port: say so; the wait before looking again."""
        if not child.port or not port_taken(child.host, child.port):
            return None
        delay = child.backoff.next(0.0)
        self.printer.say(
            f"{child.name}: port {child.port} on {child.host} is taken by another process; "
            f"trying again in {delay:g}s"
        )
        return delay

    def write_state(self) -> None:
        status.write_state(self.config, list(self.children.values()))

    async def stop_all(self) -> dict[str, int]:
        """Stop every child in reverse order; the exit code of each that did not stop cleanly.

        The gateway first (no new requests), then the services together: start
        order says nothing of who calls whom, and one by one took 3x as long.
        Cleanly: exit code 0, or killed by our SIGTERM before it could handle it
        (still starting). One left down after a crash (`restart = "no"`) counts.
        """
        codes: dict[str, int | None] = {}
        for wave in reversed(self.waves()):
            stopped = await asyncio.gather(*map(self.stop, wave[::-1]))
            codes.update(zip([c.name for c in wave[::-1]], stopped, strict=True))
        status.remove_state(self.config)
        failed = {}
        for name, child in self.children.items():
            code = codes[name] if codes[name] not in (None, 0, -signal.SIGTERM) else child.left_down
            if code:
                failed[name] = code
        return failed

    async def stop(self, child: Child) -> int | None:
        """SIGTERM, then SIGKILL if it outlives drain and grace periods; its exit code (None: none ran)."""
        process = child.process
        if process is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.config.drain_period + self.config.grace_period + 5)
        except TimeoutError:
            self.printer.say(f"{child.name} did not stop in time; killing it")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        await self.reap(child)
        return process.returncode
