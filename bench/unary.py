"""Unary throughput of GetPassenger on four server variants, side by side: `make bench`.

What it answers: what the runtime's per-call work (calls.py) costs, and what
the server model (grpc.aio vs the grpcio thread pool) costs, on a real
handler (a SQLite read) rather than an echo. See docs/benchmarks.md.

Method: every variant (bench/servers.py) is its own process pinned to core 0;
h2load is pinned to core 1. One passenger is created through the runtime,
then every server is checked with a real gRPC call, warmed up, and measured
in alternating rounds (A B C D, D C B A, ...), because the machine is shared
and only ratios taken side by side in one run mean anything. Each run checks
that no request failed and that every response carried the passenger (the
DATA bytes h2load counts are exactly N gRPC messages; a gRPC error response
carries none). Besides calls/s it reports the server's CPU time per call and
how much of core 0 the server got (well under 100 %: something else ran on
core 0) and the hypervisor's steal time on core 0 (the VM's neighbours).
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
from rideshare.passengers.v1 import passengers_pb2_grpc
from rideshare.passengers.v1.passengers_pb2 import CreatePassengerRequest, GetPassengerRequest, Passenger

from bench.servers import VARIANTS

METHOD = "/rideshare.passengers.v1.PassengerService/GetPassenger"
SERVER_CORE = "0"
CLIENT_CORE = "1"
CONNECTIONS = 8
STREAMS = 8
REPO = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")

MESH_TOML = """\
host = "127.0.0.1"
data_dir = "{data_dir}"
log_level = "info"
grace_period = "1s"

[services.passengers]
port = 50051  # unused: the bench servers bind port 0
"""

RATIOS = (
    ("runtime / bare aio", "runtime", "aio"),
    ("runtime / bare sync", "runtime", "sync"),
    ("sync-wrapped / runtime", "sync-wrapped", "runtime"),
    ("sync-wrapped / bare sync", "sync-wrapped", "sync"),
)


@dataclass(frozen=True)
class Run:
    """One h2load run against one variant."""

    variant: str
    calls_per_s: float
    cpu_us_per_call: float
    core_share: float
    steal: float
    """Share of the run the hypervisor gave core 0's time to another machine."""


def core_steal_seconds(core: str) -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            return int(line.split()[8]) / _TICKS
    return 0.0


@dataclass
class Server:
    variant: str
    process: subprocess.Popen[bytes]
    port: int

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS


def start_server(variant: str, config: Path, max_seconds: float) -> Server:
    """A bench server pinned to the server core; waits for the port it bound."""
    module = ["bench.servers", variant, str(config), "--max-seconds", str(max_seconds)]
    return start_process(variant, [sys.executable, "-m", *module])


def start_process(variant: str, argv: list[str], port: int = 0, env: dict[str, str] | None = None) -> Server:
    """`argv` pinned to the server core, stdin held open; waits for the port it prints on stdout
    (or, when `port` is given, until that port accepts connections)."""
    process = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, *argv],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL if port else subprocess.PIPE,
        env=env,
    )
    server = Server(variant, process, port)
    if port:
        return _wait_for_port(server)
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    line = b""
    while process.poll() is None and _readable(process.stdout, deadline):
        line = process.stdout.readline()
        if line.strip().isdigit():
            server.port = int(line)
            return server
    stop_server(server)
    raise SystemExit(f"bench: the {variant} server did not start (last output {line!r})")


def _wait_for_port(server: Server) -> Server:
    deadline = time.monotonic() + 30
    while server.process.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    stop_server(server)
    raise SystemExit(f"bench: {server.variant} did not listen on port {server.port}")


def _readable(stream: IO[bytes], deadline: float) -> bool:
    return bool(select.select([stream], [], [], max(0.0, deadline - time.monotonic()))[0])


def stop_server(server: Server) -> None:
    if server.process.stdin is not None:
        server.process.stdin.close()
    server.process.terminate()
    try:
        server.process.wait(5)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(5)


@contextmanager
def servers(config: Path, max_seconds: float) -> Iterator[dict[str, Server]]:
    started: dict[str, Server] = {}
    try:
        for variant in VARIANTS:
            started[variant] = start_server(variant, config, max_seconds)
        yield started
    finally:
        for server in started.values():
            stop_server(server)


def create_passenger(port: int) -> Passenger:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = passengers_pb2_grpc.PassengerServiceStub(channel)
        draft = Passenger(display_name="Bench Rider", email="bench.rider@example.com", phone="+447700900123")
        created: Passenger = stub.CreatePassenger(CreatePassengerRequest(passenger=draft), timeout=10)
        return created


def check_get(server: Server, expected: Passenger) -> None:
    """A real gRPC call: the variant answers GetPassenger with status OK and the passenger."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = passengers_pb2_grpc.PassengerServiceStub(channel)
        got = stub.GetPassenger(GetPassengerRequest(name=expected.name), timeout=10)
    if got != expected:
        raise SystemExit(f"bench: {server.variant} answered {got} instead of {expected}")


_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
    r"(\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx")
_DATA = re.compile(r"\((\d+)\) data")


def h2load(server: Server, framed: Path, calls: int, response_bytes: int, method: str = METHOD) -> Run:
    """One h2load run; fails loudly unless every call was a gRPC OK carrying the expected response."""
    command = [
        "taskset", "-c", CLIENT_CORE, "h2load", "-n", str(calls), "-c", str(CONNECTIONS), "-m", str(STREAMS),
        "-N", "10s", "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(framed),
        f"http://127.0.0.1:{server.port}{method}",
    ]  # fmt: skip
    cpu_before, steal_before = server.cpu_seconds(), core_steal_seconds(SERVER_CORE)
    started = time.monotonic()
    limit = max(60, calls / 100)
    result = subprocess.run(command, capture_output=True, text=True, timeout=limit, check=False)
    wall = time.monotonic() - started
    cpu = server.cpu_seconds() - cpu_before
    steal = core_steal_seconds(SERVER_CORE) - steal_before
    out = result.stdout
    finished, requests, status, data = (p.search(out) for p in (_FINISHED, _REQUESTS, _STATUS, _DATA))
    if result.returncode != 0 or not (finished and requests and status and data):
        raise SystemExit(f"bench: h2load failed against {server.variant}:\n{out}\n{result.stderr}")
    _, _, done, succeeded, failed, errored, timeouts = map(int, requests.groups())
    problems = []
    if (done, succeeded, int(status.group(1))) != (calls, calls, calls) or failed or errored or timeouts:
        problems.append(requests.group(0) + "; " + status.group(0))
    if int(data.group(1)) != calls * response_bytes:
        problems.append(f"{data.group(1)} DATA bytes, not {calls} x {response_bytes}: some calls not OK")
    if problems:
        raise SystemExit(f"bench: bad run against {server.variant}: {'; '.join(problems)}")
    return Run(server.variant, float(finished.group(3)), cpu / calls * 1e6, cpu / wall, steal / wall)


def frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message, uncompressed."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def measure(args: argparse.Namespace, workdir: Path) -> list[Run]:
    config = workdir / "mesh.toml"
    config.write_text(MESH_TOML.format(data_dir=workdir / "data"))
    runs: list[Run] = []
    with servers(config, max_seconds=args.max_seconds) as started:
        passenger = create_passenger(started["runtime"].port)
        for server in started.values():
            check_get(server, passenger)
        framed = workdir / "framed.bin"
        framed.write_bytes(frame(GetPassengerRequest(name=passenger.name).SerializeToString()))
        response_bytes = len(frame(passenger.SerializeToString()))
        print(f"passenger {passenger.name}; request {framed.stat().st_size} B, response {response_bytes} B")
        for server in started.values():
            h2load(server, framed, args.warmup, response_bytes)
        for number in range(args.rounds):
            order = list(VARIANTS) if number % 2 == 0 else list(reversed(VARIANTS))
            for variant in order:
                run = h2load(started[variant], framed, args.calls, response_bytes)
                runs.append(run)
                print(
                    f"round {number + 1}/{args.rounds} {variant:>12}: {run.calls_per_s:8,.0f} calls/s "
                    f"{run.cpu_us_per_call:6.0f} us CPU/call  core {SERVER_CORE} share {run.core_share:4.0%} "
                    f"steal {run.steal:3.0%}",
                    flush=True,
                )
        for server in started.values():
            check_get(server, passenger)
    return runs


def report(runs: list[Run], rounds: int) -> str:
    by_variant = {v: [r for r in runs if r.variant == v] for v in VARIANTS}
    lines = [
        "| variant | median calls/s | min - max | server CPU us/call (median) | core-0 share (min) "
        "| steal (max) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, mine in by_variant.items():
        rates = [r.calls_per_s for r in mine]
        lines.append(
            f"| {variant} | {statistics.median(rates):,.0f} | {min(rates):,.0f} - {max(rates):,.0f} "
            f"| {statistics.median(r.cpu_us_per_call for r in mine):.0f} "
            f"| {min(r.core_share for r in mine):.0%} | {max(r.steal for r in mine):.0%} |"
        )
    lines += [
        "",
        "| ratio (throughput) | of medians | per round: median (min - max) | CPU/call, inverted |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, top, bottom in RATIOS:
        per_round = [
            by_variant[top][i].calls_per_s / by_variant[bottom][i].calls_per_s for i in range(rounds)
        ]
        medians = statistics.median(r.calls_per_s for r in by_variant[top]) / statistics.median(
            r.calls_per_s for r in by_variant[bottom]
        )
        cpu = statistics.median(r.cpu_us_per_call for r in by_variant[bottom]) / statistics.median(
            r.cpu_us_per_call for r in by_variant[top]
        )
        lines.append(
            f"| {label} | {medians:.2f} | {statistics.median(per_round):.2f} "
            f"({min(per_round):.2f} - {max(per_round):.2f}) | {cpu:.2f} |"
        )
    return "\n".join(lines)


def preflight() -> None:
    missing = [tool for tool in ("h2load", "taskset") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"bench: {', '.join(missing)} not found; `make bench` installs them")
    cores = os.sched_getaffinity(0)
    if not {int(SERVER_CORE), int(CLIENT_CORE)} <= cores:
        raise SystemExit(f"bench: needs cores {SERVER_CORE} and {CLIENT_CORE}, this process may use {cores}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="GetPassenger throughput on four server variants.")
    parser.add_argument("--quick", action="store_true", help="3 short rounds (about 20 s), for a smoke run")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 5, quick 3; at least 3)")
    parser.add_argument("--calls", type=int, help="calls per run (default 20000, quick 2000)")
    parser.add_argument("--warmup", type=int, help="calls per variant before measuring (default 5000)")
    parser.add_argument("--max-seconds", type=float, default=1800, help="servers stop after this, regardless")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.calls = args.calls or (2000 if args.quick else 20000)
    args.warmup = args.warmup or (1000 if args.quick else 5000)
    if args.rounds < 3 or not 0 < args.calls <= 1_000_000 or not 0 < args.warmup <= 1_000_000:
        parser.error("--rounds must be at least 3, --calls and --warmup between 1 and 1,000,000")
    preflight()
    print(
        f"GetPassenger, {args.rounds} rounds x {args.calls} calls per variant, h2load -c {CONNECTIONS} "
        f"-m {STREAMS} on core {CLIENT_CORE}, servers on core {SERVER_CORE}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rideshare-bench-") as workdir:
        runs = measure(args, Path(workdir))
    print()
    print(report(runs, args.rounds))
    print(f"\n{time.monotonic() - started:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
