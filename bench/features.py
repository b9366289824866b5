"""What each mesh feature costs per call: `python -m bench.features` (the last part of `make bench`).

The question (issue 5): how much throughput do mTLS, telemetry,
authorization and a second hop cost, against the plain runtime on the same
call, and do the features together stay under 15 %? Every variant is a real
`mesh serve` process (the whole runtime, nothing stubbed) started from its
own temporary mesh.toml on a free 127.0.0.1 port, all reading one SQLite file:

- `plain`: `mesh serve passengers` with metrics and traces off, no TLS, no rules;
- `telemetry`: + `[telemetry]` at its defaults (metrics, file traces, 1 % of new traces);
- `mtls`: + `[tls]` (certificates from `services.mesh.certs` in a temporary directory);
- `mtls+authz`: + a `[services.passengers.authz]` rule admitting the load client's identity;
- `all`: telemetry + mTLS + authz;
- `two-hop`: the load calls `front`, a bench-only service (this module's `create`) whose
  GetPassenger asks passengers through `runtime.clients`, as trips does; both plain;
- `two-hop all`: the same with every feature on in both processes (compared with `two-hop`).

h2load cannot present a client certificate, so the load comes from this
module's `load` command: a grpc.aio client process (bytes in and out, no
protobuf work) with `--concurrency` calls in flight over `--channels`
connections, presenting the `mesh` identity when TLS is on. Servers are
pinned to core 0 (both processes of a two-hop: the point is the CPU a call
costs the mesh), the client to core 1. Before measuring, the client is shown
not to be the bottleneck: it drives a bare thread-pool server
(`bench.servers sync`) well past the plain runtime's rate, and it gets the
same rate from the plain runtime as h2load does. Every variant answers a
real call first, the TLS ones refuse a plaintext client, the authz ones the
`gateway` identity. Rounds alternate their order (A..G, G..A, ...); every call
of a run must return the expected passenger. After the rounds, /metrics of
the telemetry variants must count the calls. See docs/benchmarks.md, "Mesh features".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from rideshare.passengers.v1 import passengers_pb2, passengers_pb2_grpc
from rideshare.passengers.v1.passengers_pb2 import CreatePassengerRequest, GetPassengerRequest, Passenger

from bench.unary import (
    CLIENT_CORE,
    REPO,
    SERVER_CORE,
    Server,
    frame,
    h2load,
    preflight,
    start_server,
    stop_server,
)
from services.mesh import certs
from services.runtime import Runtime, Service, identity
from services.runtime.config import MeshConfig, load_config

METHOD = "/rideshare.passengers.v1.PassengerService/GetPassenger"
#: The load client's identity with TLS on (the `mesh` tool's certificate).
CLIENT_IDENTITY = "mesh"
#: The issue's goal: all features together cost less than this share of throughput.
GOAL = 0.15
#: The client must drive the bare server at least this much faster than the plain runtime.
CLIENT_HEADROOM = 1.2
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Variant:
    name: str
    tls: bool = False
    telemetry: bool = False
    authz: bool = False
    two_hop: bool = False
    baseline: str = "plain"
    """The variant this one's ratio is taken against (same round)."""


VARIANTS = (
    Variant("plain"),
    Variant("telemetry", telemetry=True),
    Variant("mtls", tls=True),
    Variant("mtls+authz", tls=True, authz=True),
    Variant("all", tls=True, telemetry=True, authz=True),
    Variant("two-hop", two_hop=True),
    Variant("two-hop all", tls=True, telemetry=True, authz=True, two_hop=True, baseline="two-hop"),
)
#: (variant, against): the cost that must stay under GOAL.
GOALS = (("all", "plain"), ("two-hop all", "two-hop"))


# -- the bench-only front service (`mesh serve front` imports this module) -------------------------------


class Forwarder(passengers_pb2_grpc.PassengerServiceServicer):
    """GetPassenger answered by asking the passenger service, the way trips asks it (trips/clients.py)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def GetPassenger(
        self, request: GetPassengerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Passenger:
        stub = self.runtime.clients.stub(passengers_pb2_grpc.PassengerServiceStub)
        passenger: Passenger = await stub.GetPassenger(request)
        return passenger


def create(runtime: Runtime) -> Service:
    """The `front` service of the two-hop variants (`module = "bench.features"` in their mesh.toml)."""
    return Service(
        descriptor=passengers_pb2.DESCRIPTOR.services_by_name["PassengerService"],
        servicer=Forwarder(runtime),
        register=passengers_pb2_grpc.add_PassengerServiceServicer_to_server,
    )


# -- the variants' mesh files and processes --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def mesh_toml(variant: Variant, workdir: Path) -> str:
    """The variant's mesh file, on free ports; every variant shares the data dir and the certificates."""
    lines = [
        'host = "127.0.0.1"',
        f'data_dir = "{workdir / "data"}"',
        'log_level = "info"',
        'grace_period = "1s"',
        'drain_period = "0s"',
        "",
        "[tls]",
        f"enabled = {str(variant.tls).lower()}",
        f'dir = "{workdir / "certs"}"',
        "",
        "[telemetry]",
    ]
    if not variant.telemetry:
        lines += ["metrics = false", 'traces = "off"']
    if variant.tls:  # the bench reads /metrics in plain HTTP at the end; the call path is what it measures
        lines.append('admin_auth = "none"')
    callers = {"passengers": "front" if variant.two_hop else CLIENT_IDENTITY, "front": CLIENT_IDENTITY}
    for name in ("front", "passengers") if variant.two_hop else ("passengers",):
        lines += ["", f"[services.{name}]", f"port = {free_port()}"]
        lines.append(f"admin_port = {free_port() if variant.telemetry else 0}")
        if name == "front":
            lines += ['module = "bench.features"', 'package = "bench.front.v1"']
        if variant.authz:
            lines += [f"[services.{name}.authz]", f'"*" = ["{callers[name]}"]']
    return "\n".join(lines) + "\n"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without MESH_* variables, which would override every variant's config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env.update(extra)
    return env


@dataclass
class Target:
    """Server processes the load client calls: a variant's, or the bare server of the client check."""

    name: str
    config: Path
    service: str = "passengers"
    """The member the load reaches first (`front` in a two-hop): whose certificate the client expects."""
    servers: list[Server] = field(default_factory=list)
    """The first one takes the load."""
    variant: Variant = VARIANTS[0]

    @property
    def port(self) -> int:
        return self.servers[0].port

    def mesh(self) -> MeshConfig:
        return load_config(self.config, env={})

    def cpu_seconds(self) -> float:
        return sum(s.cpu_seconds() for s in self.servers)


def mesh_serve(name: str, config: Path, logs: Path) -> Server:
    """`mesh serve NAME` pinned to the server core; it stops when our pipe to its stdin closes."""
    port = load_config(config, env={}).service(name).port
    log_file = logs / f"{config.stem}-{name}.log"
    with log_file.open("wb") as log:
        argv = [sys.executable, "-m", "services.mesh.cli", "serve", name, "--config", str(config)]
        process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *argv],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(MESH_SUPERVISED="1"),
        )
    server = Server(f"{config.stem}/{name}", process, port)
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    stop(server)
    raise SystemExit(f"bench: {server.variant} did not listen on {port}:\n{log_file.read_text()[-2000:]}")


def stop(server: Server) -> None:
    """`stop_server` that never raises: in a `finally`, every process must get its turn."""
    try:
        stop_server(server)
    except subprocess.TimeoutExpired:
        server.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(30)


def chosen(names: str | None) -> tuple[Variant, ...]:
    """The variants `--variants a,b` names, with what they are compared with; all when None.

    Raises ValueError naming an unknown variant.
    """
    if names is None:
        return VARIANTS
    by_name = {v.name: v for v in VARIANTS}
    wanted = {"plain"}  # the client check and the test passenger need it
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in by_name:
            raise ValueError(f"no variant {name!r}; there are {', '.join(by_name)}")
        wanted |= {name, by_name[name].baseline}
    return tuple(v for v in VARIANTS if v.name in wanted)


@contextlib.contextmanager
def variants(workdir: Path, which: Sequence[Variant] = VARIANTS) -> Iterator[dict[str, Target]]:
    """The variants' processes, running; all stopped on the way out."""
    started: dict[str, Target] = {}
    logs = workdir / "logs"
    logs.mkdir()
    try:
        for variant in which:
            config = workdir / f"{re.sub(r'[^a-z]+', '-', variant.name)}.toml"
            config.write_text(mesh_toml(variant, workdir))
            target = Target(variant.name, config, "front" if variant.two_hop else "passengers", [], variant)
            started[variant.name] = target
            target.servers.append(mesh_serve("passengers", config, logs))
            if variant.two_hop:
                target.servers.insert(0, mesh_serve("front", config, logs))
        yield started
    finally:
        for target in started.values():
            for server in target.servers:
                stop(server)


def make_certs(workdir: Path) -> None:
    """The CA and a certificate for every identity the variants use (passengers, front, mesh, gateway)."""
    everyone = workdir / "certs.toml"
    everyone.write_text(mesh_toml(VARIANTS[-1], workdir))
    certs.ensure(load_config(everyone, env={}))


# -- checks: the variants answer, and their features are on ----------------------------------------------


@contextlib.contextmanager
def channel_to(target: Target, caller: str | None) -> Iterator[passengers_pb2_grpc.PassengerServiceStub]:
    """A stub for the target; with TLS on, presenting `caller`'s identity (None: plaintext anyway)."""
    config = target.mesh()
    address = f"127.0.0.1:{target.port}"
    if config.tls.enabled and caller is not None:
        credentials = identity.load(config, caller).channel_credentials()
        channel = grpc.secure_channel(
            address, credentials, options=identity.channel_options(config, target.service)
        )
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        yield passengers_pb2_grpc.PassengerServiceStub(channel)


def create_passenger(plain: Target) -> Passenger:
    with channel_to(plain, None) as stub:
        draft = Passenger(display_name="Bench Rider", email="bench.rider@example.com", phone="+447700900123")
        request = CreatePassengerRequest(passenger=draft)
        created: Passenger = stub.CreatePassenger(request, timeout=20, wait_for_ready=True)
        return created


def check(target: Target, expected: Passenger) -> None:
    """A real call returns the passenger; TLS refuses a plaintext client; authz refuses `gateway`."""
    with channel_to(target, CLIENT_IDENTITY) as stub:
        got = stub.GetPassenger(GetPassengerRequest(name=expected.name), timeout=20, wait_for_ready=True)
    if got != expected:
        raise SystemExit(f"bench: {target.name} answered {got} instead of {expected}")
    if target.variant.tls:
        _refused(target, expected.name, None, grpc.StatusCode.UNAVAILABLE)
    if target.variant.authz:
        _refused(target, expected.name, "gateway", grpc.StatusCode.PERMISSION_DENIED)


def _refused(target: Target, name: str, caller: str | None, code: grpc.StatusCode) -> None:
    who = caller or "a plaintext client"
    with channel_to(target, caller) as stub:
        try:
            stub.GetPassenger(GetPassengerRequest(name=name), timeout=5)
        except grpc.RpcError as error:
            if error.code() is code:
                return
            problem = f"answered {who} with {error.code()}, not {code}"
        else:
            problem = f"served {who}: the feature is not on"
    raise SystemExit(f"bench: {target.name} {problem}")


_COUNTER = re.compile(r"^mesh_(server|client)_calls_total\{([^}]*)\} ([0-9.e+]+)$", re.MULTILINE)


def counted_calls(target: Target) -> str:
    """The OK calls each process of a telemetry variant counted on /metrics, by side and caller."""
    config = target.mesh()
    parts = []
    for server in target.servers:
        service = server.variant.rsplit("/", 1)[-1]
        url = f"http://127.0.0.1:{config.service(service).admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        found = [m for m in _COUNTER.finditer(text) if 'grpc_code="OK"' in m[2]]
        if not found:
            raise SystemExit(f"bench: {server.variant} /metrics counted no OK calls")
        for match in found:
            caller = re.search(r'caller="([^"]*)"', match[2])
            parts.append(
                f"{service} {match[1]} side, caller {caller[1] if caller else '?'}: {float(match[3]):,.0f}"
            )
    return "; ".join(parts)


def spans_written(workdir: Path) -> int:
    return sum(f.read_text().count("\n") for f in (workdir / "data" / "traces").glob("*.jsonl"))


# -- the load client ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    target: str
    calls_per_s: float
    server_cpu_us: float
    """Server CPU time per call, all processes of the target."""
    server_share: float
    """Server CPU time / wall time: near 100 % means the servers had core 0 to themselves."""
    client_cpu_us: float
    client_share: float
    """The load client's CPU time / wall time: near 100 % would mean the client is the bottleneck."""
    others: float
    """Share of core 0 busy with anything but the target (other processes, interrupts, steal)."""
    others_client_core: float
    """The same on core 1, besides the load client: other work there slows core 0 down too."""


def core_busy_seconds(core: str) -> float:
    """Time core `core` spent on anything but idling, since boot (the hypervisor's steal included)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(t) for t in line.split()[1:9]]
            return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS
    return 0.0


def _readline(stream: IO[bytes], deadline: float) -> bytes:
    if not select.select([stream], [], [], max(0.0, deadline - time.monotonic()))[0]:
        return b""
    return stream.readline()


def load(args: argparse.Namespace, target: Target, expected: Passenger, seconds: float) -> Run:
    """One run of the load client (a process on the client core) against the target.

    A failed call fails the bench. So does a run in which no call finished
    (seen only while other work flooded the machine): the message says how busy the cores were.
    """
    command = [
        "taskset", "-c", CLIENT_CORE, sys.executable, "-m", "bench.features", "load",
        "--config", str(target.config), "--service", target.service, "--port", str(target.port),
        "--name", expected.name, "--expect", expected.SerializeToString().hex(), "--seconds", str(seconds),
        "--warmup", str(args.warmup), "--concurrency", str(args.concurrency),
        "--channels", str(args.channels),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, env=clean_env())
    assert process.stdout is not None
    try:
        deadline = time.monotonic() + args.warmup + seconds + 60
        line = _readline(process.stdout, deadline)
        if line.strip() != b"measuring":
            raise SystemExit(f"bench: the load client for {target.name} did not start ({line!r})")
        cpu, busy, started = target.cpu_seconds(), core_busy_seconds(SERVER_CORE), time.monotonic()
        busy_client_core = core_busy_seconds(CLIENT_CORE)
        line = _readline(process.stdout, deadline)
        wall = time.monotonic() - started
        cpu, busy = target.cpu_seconds() - cpu, core_busy_seconds(SERVER_CORE) - busy
        busy_client_core = core_busy_seconds(CLIENT_CORE) - busy_client_core
        if not line or process.wait(max(1.0, deadline - time.monotonic())) != 0:
            raise SystemExit(f"bench: the load client failed against {target.name} ({line!r})")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    result = json.loads(line)
    if result["failed"]:
        raise SystemExit(f"bench: {result['failed']} calls failed against {target.name}: {result['error']}")
    calls, elapsed = result["calls"], result["seconds"]
    run = Run(
        target.name,
        calls / elapsed,
        cpu / max(calls, 1) * 1e6,
        cpu / wall,
        result["cpu_seconds"] / max(calls, 1) * 1e6,
        result["cpu_seconds"] / elapsed,
        max(0.0, busy - cpu) / wall,
        max(0.0, busy_client_core - result["cpu_seconds"]) / wall,
    )
    if not calls:
        raise SystemExit(
            f"bench: no call to {target.name} finished in {seconds:g} s; core {SERVER_CORE}: servers "
            f"{run.server_share:.0%}, others {run.others:.0%}; core {CLIENT_CORE}: client "
            f"{run.client_share:.0%}, others {run.others_client_core:.0%}; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
    return run


@dataclass
class Tally:
    """What the load client's workers share (one event loop: no lock)."""

    counting: bool = False
    stop: bool = False
    calls: int = 0
    failed: int = 0
    error: str = ""


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    """The load client's work: warm up, say `measuring`, count the OK calls of `--seconds`."""
    config = load_config(args.config, env={})
    credentials = identity.channel_credentials(config, CLIENT_IDENTITY)
    address = f"127.0.0.1:{args.port}"
    channels = []
    for number in range(args.channels):
        # Distinct channel arguments: grpc would otherwise share one connection between them.
        options = [("grpc.primary_user_agent", f"rideshare-{CLIENT_IDENTITY}"), ("bench.channel", number)]
        if credentials is None:
            channels.append(grpc.aio.insecure_channel(address, options=options))
        else:
            options += identity.channel_options(config, args.service)
            channels.append(grpc.aio.secure_channel(address, credentials, options=options))
    calls: list[Any] = [c.unary_unary(METHOD) for c in channels]  # no serializers: bytes in and out
    request = GetPassengerRequest(name=args.name).SerializeToString()
    expected = bytes.fromhex(args.expect)
    tally = Tally()

    async def worker(call: Any) -> None:
        while not tally.stop:
            try:
                response = await call(request, timeout=30)
                error = "" if response == expected else f"unexpected response {response!r}"
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            if tally.counting:
                if error:
                    tally.failed += 1
                    tally.error = tally.error or error
                else:
                    tally.calls += 1

    workers = [asyncio.create_task(worker(calls[i % len(calls)])) for i in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    print("measuring", flush=True)
    tally.counting = True
    started, cpu = time.monotonic(), time.process_time()
    await asyncio.sleep(args.seconds)
    tally.counting = False
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    tally.stop = True
    await asyncio.gather(*workers)
    for channel in channels:
        await channel.close()
    return {
        "calls": tally.calls,
        "failed": tally.failed,
        "error": tally.error,
        "seconds": elapsed,
        "cpu_seconds": cpu,
    }


def load_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.features load")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--service", required=True, help="the member served at --port (TLS name check)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True, help="the passenger to get")
    parser.add_argument("--expect", required=True, help="the serialized passenger, hex")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--channels", type=int, default=4)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(drive(args))), flush=True)


# -- the bench ---------------------------------------------------------------------------------------------


def client_check(args: argparse.Namespace, workdir: Path, plain: Target, passenger: Passenger) -> list[str]:
    """Show the load client is not the bottleneck; the lines that say so."""
    bare = Target("bare sync", plain.config, servers=[start_server("sync", plain.config, max_seconds=900)])
    runs: dict[str, list[float]] = {"bare sync": [], "plain": [], "plain, h2load": []}
    shares: dict[str, list[float]] = {"bare sync": [], "plain": []}
    cpu_us: dict[str, list[float]] = {"bare sync": [], "plain": []}
    try:
        framed = workdir / "framed.bin"
        framed.write_bytes(frame(GetPassengerRequest(name=passenger.name).SerializeToString()))
        response_bytes = len(frame(passenger.SerializeToString()))
        h2load(plain.servers[0], framed, 2000, response_bytes)
        for _ in range(args.check_rounds):
            for target in (bare, plain):
                run = load(args, target, passenger, args.seconds)
                runs[target.name].append(run.calls_per_s)
                shares[target.name].append(run.client_share)
                cpu_us[target.name].append(run.client_cpu_us)
            runs["plain, h2load"].append(h2load(plain.servers[0], framed, 10000, response_bytes).calls_per_s)
    finally:
        stop(bare.servers[0])
    lines = []
    for name, rates in runs.items():
        who = "h2load"
        if name in shares:
            who = (
                f"the load client, {statistics.median(cpu_us[name]):.0f} us client CPU/call, "
                f"core {CLIENT_CORE} {max(shares[name]):.0%} busy at most"
            )
        lines.append(f"  {name:>13}: {statistics.median(rates):7,.0f} calls/s from {who}")
    headroom = statistics.median(runs["bare sync"]) / statistics.median(runs["plain"])
    verdict = "not the bottleneck" if headroom >= CLIENT_HEADROOM else "WARNING: it may be the bottleneck"
    lines.append(
        f"  the client drives the bare server {headroom:.2f}x as fast as the plain runtime: {verdict}"
    )
    return lines


def measure(args: argparse.Namespace, workdir: Path) -> tuple[list[Run], list[str]]:
    make_certs(workdir)
    runs: list[Run] = []
    with variants(workdir, args.variants) as started:
        passenger = create_passenger(started["plain"])
        for target in started.values():
            check(target, passenger)
        print("every variant answers; the TLS ones refuse plaintext, the authz ones refuse gateway")
        print("load client check:\n" + "\n".join(client_check(args, workdir, started["plain"], passenger)))
        names = list(started)
        for name in names:
            load(args, started[name], passenger, 1.0)
        for number in range(args.rounds):
            for name in names if number % 2 == 0 else reversed(names):
                run = load(args, started[name], passenger, args.seconds)
                runs.append(run)
                print(
                    f"round {number + 1}/{args.rounds} {name:>11}: {run.calls_per_s:7,.0f} calls/s, "
                    f"{run.server_cpu_us:5.0f} us server CPU/call; core {SERVER_CORE}: "
                    f"ours {run.server_share:4.0%}, others {run.others:3.0%}; core {CLIENT_CORE}: "
                    f"client {run.client_share:4.0%}, others {run.others_client_core:3.0%}",
                    flush=True,
                )
        evidence = [f"{n}: {counted_calls(t)}" for n, t in started.items() if t.variant.telemetry]
        for target in started.values():
            check(target, passenger)
        time.sleep(1.5)  # the span processors write once a second
        evidence.append(f"spans in the trace files: {spans_written(workdir):,}")
    return runs, evidence


def report(runs: list[Run], rounds: int, which: Sequence[Variant] = VARIANTS) -> str:
    by_name = {v.name: [r for r in runs if r.target == v.name] for v in which}
    lines = [
        "| variant | against | median calls/s | throughput ratio, per round: median (min - max) "
        "| server CPU us/call | CPU/call ratio, inverted | client's core share (max) "
        "| others on core 0 / 1 (max) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    costs = {}
    for variant in which:
        mine, base = by_name[variant.name], by_name[variant.baseline]
        per_round = [mine[i].calls_per_s / base[i].calls_per_s for i in range(rounds)]
        cpu = statistics.median(r.server_cpu_us for r in mine)
        base_cpu = statistics.median(r.server_cpu_us for r in base)
        costs[variant.name] = 1 - statistics.median(per_round)
        lines.append(
            f"| {variant.name} | {variant.baseline} | {statistics.median(r.calls_per_s for r in mine):,.0f} "
            f"| {statistics.median(per_round):.3f} ({min(per_round):.2f} - {max(per_round):.2f}) "
            f"| {cpu:.0f} | {base_cpu / cpu:.3f} | {max(r.client_share for r in mine):.0%} "
            f"| {max(r.others for r in mine):.0%} / {max(r.others_client_core for r in mine):.0%} |"
        )
    lines.append("")
    for name, baseline in GOALS:
        if name not in costs:
            continue
        verdict = "under" if costs[name] < GOAL else "OVER"
        lines.append(
            f"{name} vs {baseline}: costs {costs[name]:.1%} of throughput ({verdict} the {GOAL:.0%} goal)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["load"]:
        load_main(argv[1:])
        return
    parser = argparse.ArgumentParser(
        prog="python -m bench.features", description="What each mesh feature costs per GetPassenger call."
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s (about 2 minutes), a smoke run")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 5, at least 3; quick 2)")
    parser.add_argument("--seconds", type=float, help="measured seconds per run (default 5, quick 2)")
    parser.add_argument(
        "--warmup-seconds", type=float, default=1.0, help="seconds of load before each measurement"
    )
    parser.add_argument(
        "--variants",
        help=f"comma-separated subset to run (their baselines and plain come along); of: "
        f"{', '.join(v.name for v in VARIANTS)}",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight from the load client")
    parser.add_argument("--channels", type=int, default=4, help="connections of the load client")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.warmup = args.warmup_seconds
    try:
        args.variants = chosen(args.variants)
    except ValueError as exc:
        parser.error(str(exc))
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    args.check_rounds = 1 if args.quick else 2
    if not (1 if args.quick else 3) <= args.rounds <= 50:
        parser.error("--rounds from 3 (1 with --quick) to 50")
    if not 0.5 <= args.seconds <= 120 or not 0 <= args.warmup <= 60:
        parser.error("--seconds from 0.5 to 120, --warmup-seconds from 0 to 60")
    if not 1 <= args.channels <= args.concurrency <= 1024:
        parser.error("--channels from 1 to --concurrency, --concurrency at most 1024")
    preflight()
    print(
        f"Mesh features on GetPassenger: {args.rounds} rounds x {args.seconds:g} s per variant; load client "
        f"({args.concurrency} calls in flight over {args.channels} connections) on core {CLIENT_CORE}, "
        f"servers on core {SERVER_CORE}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rideshare-bench-features-") as workdir:
        runs, evidence = measure(args, Path(workdir))
    print()
    print(report(runs, args.rounds, args.variants))
    print("\ntelemetry recorded:\n  " + "\n  ".join(evidence))
    print(f"\n{time.monotonic() - started:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
