"""Shedding under overload: open-loop REST load at twice the gateway's capacity: `make bench`.

What it answers: does the gateway keep the latency of the requests it admits
bounded, and refuse the rest quickly (503 + Retry-After), when more arrives
than it can serve? (Issue 11: open-loop `RequestTrip` at twice the capacity
gave p50 9 s and p99 31 s, every caller waiting in one unbounded queue.)

What runs (servers pinned to core 0, the load to core 1):

- `billing` (`mesh serve billing`), and two gateways in front of it
  (`mesh gateway --no-auth`): `shedding` with the mesh file's defaults
  (`max_in_flight`, `max_queue_wait`, `max_lag`), and `unbounded`, the same with
  no cap, no queue limit and no lag limit (what the gateway did before); with
  `--baseline-ref REF`, also `shedding@REF`: the `shedding` gateway of another
  git revision, run from a temporary worktree;
- the call is `POST /v1/fares:quote` (`QuoteFare`: no database, a cheap call);
- capacity: wrk (16 connections, closed loop) against `shedding`;
- then, for each gateway in alternating rounds, open-loop load at 0.5x and 2x
  that capacity from this process on core 1 (asyncio + uvloop, HTTP/1.1
  keep-alive, up to 900 connections, below the gateway's cap): request i is
  due at start + i / rate whether or not earlier ones were answered, and its
  latency counts from when it was due (a request waiting for a free
  connection on the client side is waiting too: no coordinated omission).
  Bounded in count (rate x seconds) and time (answers wait at most 10 s
  after the last request was due; later ones count as unanswered). Before each
  run the servers are left to go idle (at most 30 s): an unbounded gateway
  works through its backlog long after its load stopped.

It reports, per gateway and load: the rate offered, the 200s per second of
answering (from the first request due to the last answer, which is longer
than the load when answers lag), p50 and p99 of the 200s, the count and
p50/p99 of the 503s, and anything else (`0`: a connection closed without an
answer, e.g. a keep-alive connection the gateway closed as idle just as a
request went out on it; `unanswered`: no answer within the drain).
No assertion: the figures go to docs/benchmarks.md with the command, machine and date.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.rest import baseline_env, baseline_tree, free_port
from bench.unary import CLIENT_CORE, Server, preflight, start_process, stop_server

BODY = b'{"pickup":{"latitude":52.52,"longitude":13.405},"dropoff":{"latitude":52.5,"longitude":13.45}}'
PATH = "/v1/fares:quote"
REQUEST = (
    b"POST " + PATH.encode() + b" HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
MAX_CONNECTIONS = 900
"""The load's connections at most: below the gateway's `max_connections` (1000)."""
DRAIN = 10.0
"""Seconds answers may take after the last request was due."""
MESH_TOML = """\
host = "127.0.0.1"
data_dir = "{data_dir}"
log_level = "error"  # the limits' warnings would interleave with the report
grace_period = "1s"

[services.billing]
port = {billing_port}

[gateway]
port = 0
"""
LUA = f"""\
wrk.method = "POST"
wrk.body = '{BODY.decode()}'
wrk.headers["Content-Type"] = "application/json"
"""
VARIANTS: dict[str, dict[str, str]] = {
    "shedding": {},
    "unbounded": {
        "MESH_GATEWAY__MAX_IN_FLIGHT": "1000000",
        "MESH_GATEWAY__MAX_QUEUE_WAIT": "1h",
        "MESH_GATEWAY__MAX_LAG": "0s",
    },
}
_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


@dataclass
class Result:
    variant: str
    load: float
    """Multiple of the measured capacity."""
    offered: float
    """Requests per second sent."""
    seconds: float
    """From the first request due to the last answer: longer than the load when answers lag."""
    latencies: dict[int, list[float]] = field(default_factory=dict)
    """Seconds from due to answered, by HTTP status (0: the connection closed without an answer)."""
    unanswered: int = 0


# -- the open-loop client ---------------------------------------------------------------------------------


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time (bodies need a content-length)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, bytes, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.answer is None:
            return
        head = bytes(self.buffer[:end])
        length = _CONTENT_LENGTH.search(head)
        size = end + 4 + (int(length.group(1)) if length else 0)
        if len(self.buffer) < size:
            return
        body = bytes(self.buffer[end + 4 : size])
        del self.buffer[:size]
        answer, self.answer = self.answer, None
        if not answer.done():  # given up on (past the drain): only its answer came late
            answer.set_result((int(head[9:12]), head, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((0, b"", b""))


class Pool:
    """Idle connections, new ones up to MAX_CONNECTIONS, then a wait for one to come back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[Connection] = []
        self.open = 0
        self.waiting: list[asyncio.Future[Connection]] = []
        self.opening: set[asyncio.Task[None]] = set()

    async def exchange(self, request: bytes) -> tuple[int, bytes, bytes]:
        """Send one request on a free connection: the answer's status (0: none came), head (status
        line and headers) and body."""
        try:
            connection = await self.get()
        except OSError:
            return 0, b"", b""
        answer = connection.answer = asyncio.get_running_loop().create_future()
        assert connection.transport is not None
        connection.transport.write(request)
        status, head, body = await answer
        self.put(connection, reusable=status != 0 and b"connection: close" not in head.lower())
        return status, head, body

    async def get(self) -> Connection:
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                return connection
            self.open -= 1
        if self.open < MAX_CONNECTIONS:
            self.open += 1
            try:
                _, connection = await asyncio.get_running_loop().create_connection(
                    Connection, "127.0.0.1", self.port
                )
            except OSError:
                self.open -= 1
                raise
            return connection
        waiter: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        return await waiter

    def put(self, connection: Connection, reusable: bool) -> None:
        if not reusable or connection.closed:
            if connection.transport is not None:
                connection.transport.close()
            self.open -= 1
            if self.waiting:  # room for a new connection: let a waiter open one
                task = asyncio.ensure_future(self._hand_over(self.waiting.pop(0)))
                self.opening.add(task)
                task.add_done_callback(self.opening.discard)
            return
        if self.waiting:
            self.waiting.pop(0).set_result(connection)
        else:
            self.idle.append(connection)

    async def _hand_over(self, waiter: asyncio.Future[Connection]) -> None:
        try:
            waiter.set_result(await self.get())
        except OSError as exc:
            waiter.set_exception(exc)

    def close(self) -> None:
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.close()


async def _open_loop(port: int, rate: float, seconds: float) -> tuple[dict[int, list[float]], int, float]:
    loop = asyncio.get_running_loop()
    pool = Pool(port)
    latencies: dict[int, list[float]] = {}
    pending: set[asyncio.Task[None]] = set()
    answered = [0.0]

    async def one(due: float) -> None:
        status, _, _ = await pool.exchange(REQUEST)
        answered[0] = loop.time()
        latencies.setdefault(status, []).append(answered[0] - due)

    count = int(rate * seconds)
    start = loop.time() + 0.1
    for number in range(count):
        due = start + number / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending, timeout=DRAIN)
    unanswered = len(pending)
    for task in pending:
        task.cancel()
    pool.close()
    return latencies, unanswered, max(answered[0] - start, seconds)


def open_loop(port: int, rate: float, seconds: float) -> tuple[dict[int, list[float]], int, float]:
    """Latencies by status, how many went unanswered, and seconds from the first due to the last answer."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_open_loop(port, rate, seconds))


# -- the servers, capacity, rounds ----------------------------------------------------------------------


@contextlib.contextmanager
def servers(workdir: Path, baseline: tuple[str, Path] | None = None) -> Iterator[dict[str, Server]]:
    started: dict[str, Server] = {}
    try:
        billing_port = free_port()
        config = workdir / "mesh.toml"
        config.write_text(MESH_TOML.format(data_dir=workdir / "data", billing_port=billing_port))
        mesh = [sys.executable, "-m", "services.mesh.cli", "--config", str(config)]
        env = {**os.environ, "MESH_SUPERVISED": "1"}
        started["billing"] = start_process("billing", [*mesh, "serve", "billing"], port=billing_port, env=env)
        for variant, overrides in VARIANTS.items():
            port = free_port()
            started[variant] = start_process(
                variant,
                [*mesh, "gateway", "--no-auth", "--listen", f"127.0.0.1:{port}"],
                port=port,
                env={**env, **overrides},
            )
        if baseline is not None:
            ref, tree = baseline
            port = free_port()
            started[f"shedding@{ref}"] = start_process(
                f"shedding@{ref}",
                [*mesh, "gateway", "--no-auth", "--listen", f"127.0.0.1:{port}"],
                port=port,
                env={**baseline_env(tree), **VARIANTS["shedding"]},
            )
        yield started
    finally:
        for server in started.values():
            stop_server(server)


def check(server: Server) -> None:
    """One real request answers 200 (the channel to billing may still be connecting)."""
    latencies: dict[int, list[float]] = {}
    deadline = time.monotonic() + 20
    while 200 not in latencies:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {server.variant} answered {sorted(latencies)}, not 200")
        latencies, _, _ = open_loop(server.port, 10, 0.2)


def capacity(server: Server, workdir: Path, seconds: float) -> float:
    script = workdir / "quote.lua"
    script.write_text(LUA)
    command = [
        "taskset", "-c", CLIENT_CORE, "wrk", "-t1", "-c16", f"-d{seconds:g}s", "--timeout", "5s",
        "-s", str(script), f"http://127.0.0.1:{server.port}{PATH}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    rate = _WRK_RATE.search(result.stdout)
    if result.returncode != 0 or rate is None or "Non-2xx" in result.stdout:
        raise SystemExit(f"bench: wrk failed against {server.variant}:\n{result.stdout}\n{result.stderr}")
    return float(rate.group(1))


def settle(started: dict[str, Server], limit: float = 30.0) -> None:
    """Wait (at most `limit` s) until the servers are idle: an unbounded gateway is still working
    through its backlog after the load stops, on the core the next run needs."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = sum(server.cpu_seconds() for server in started.values())
        time.sleep(0.5)
        if sum(server.cpu_seconds() for server in started.values()) - before < 0.05:
            return


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(results: list[Result], measured: float) -> str:
    lines = [
        f"capacity (wrk, 16 connections, closed loop, `shedding`): {measured:,.0f} req/s",
        "",
        "| gateway | load | offered req/s | 200s per s answering | 200 p50 / p99 ms | 503s "
        "| 503 p50 / p99 ms | other |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        ok, shed = r.latencies.get(200, []), r.latencies.get(503, [])
        others = {s: len(v) for s, v in r.latencies.items() if s not in (200, 503)}
        if r.unanswered:
            others["unanswered"] = r.unanswered  # type: ignore[index]
        lines.append(
            f"| {r.variant} | {r.load:g}x | {r.offered:,.0f} | {len(ok) / r.seconds:,.0f} "
            f"| {_ms(ok, 0.5)} / {_ms(ok, 0.99)} | {len(shed):,} | {_ms(shed, 0.5)} / {_ms(shed, 0.99)} "
            f"| {', '.join(f'{k}: {v}' for k, v in others.items()) or '-'} |"
        )
    return "\n".join(lines)


def _ms(values: list[float], share: float) -> str:
    return f"{percentile(values, share) * 1000:,.0f}" if values else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Open-loop REST load at 0.5x and 2x capacity, shed or not.")
    parser.add_argument("--quick", action="store_true", help="one round of 3 s per load (a smoke run)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 2, quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds of load per run (default 10, quick 3)")
    parser.add_argument("--loads", default="0.5,2", help="multiples of the capacity (default 0.5,2)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [gateway] key for the `shedding` gateway, e.g. max_in_flight=16 (repeatable)",
    )
    parser.add_argument(
        "--baseline-ref",
        help="also run the `shedding` gateway of this git revision (a temporary worktree), side by side",
    )
    args = parser.parse_args(argv)
    for setting in args.set:
        key, _, value = setting.partition("=")
        VARIANTS["shedding"][f"MESH_GATEWAY__{key.strip().upper()}"] = value.strip()
    rounds = args.rounds or (1 if args.quick else 2)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    loads = [float(x) for x in args.loads.split(",")]
    if rounds < 1 or not 0 < seconds <= 120 or not all(0 < x <= 10 for x in loads):
        parser.error("--rounds at least 1, --seconds up to 120, --loads between 0 and 10")
    preflight()
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    print(
        f"POST {PATH} (QuoteFare) through two gateways: {rounds} round(s) x {seconds:g} s per load; "
        f"servers on core 0, load on core {CLIENT_CORE}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    started = time.monotonic()
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="rideshare-bench-overload-"))
        tree = stack.enter_context(baseline_tree(args.baseline_ref)) if args.baseline_ref else None
        up = stack.enter_context(servers(Path(folder), (args.baseline_ref, tree) if tree else None))
        workdir = Path(folder)
        variants = [name for name in up if name != "billing"]
        for variant in variants:
            check(up[variant])
        capacity(up["shedding"], workdir, 2.0)  # warm-up
        measured = capacity(up["shedding"], workdir, min(seconds, 5.0))
        print(f"capacity: {measured:,.0f} req/s", flush=True)
        for number in range(rounds):
            order = variants if number % 2 == 0 else list(reversed(variants))
            for variant in order:
                for load in loads:
                    rate = measured * load
                    settle(up)
                    latencies, unanswered, span = open_loop(up[variant].port, rate, seconds)
                    result = Result(variant, load, rate, span, latencies, unanswered)
                    results.append(result)
                    counts = Counter({status: len(v) for status, v in latencies.items()})
                    print(f"round {number + 1} {variant:>9} {load:g}x: {dict(counts)}", flush=True)
    print()
    print(report(results, measured))
    print(f"\n{time.monotonic() - started:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
