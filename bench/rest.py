"""REST throughput: one Echo call over gRPC, through our bridge, and through grpc-gateway: `make bench`.

What it answers: what the REST bridge costs on top of a gRPC call, and how it
compares with grpc-gateway (Go), the usual choice, fronting the same backend.

What runs (every server pinned to core 0, load generators to core 1):

- `backend`: `bench.v1.Echo` on a bare grpc.aio server (bench/echo.py), one
  process shared by every variant;
- `direct`: h2load straight to the backend (the gRPC ceiling; 8 connections x 8 streams);
- `bridge`: our bridge in front of the backend as `mesh gateway --upstream ...
  --descriptor-set ... --no-auth` (what fronting any gRPC server costs);
- `bridge-mesh`: the same bridge in mesh mode (the backend is a mesh service).
  Both call through the runtime's grpc.aio client, with its retries, balancing
  and telemetry; they differ in how the upstream is named;
- `bridge-mesh-h11`: the same, served by uvicorn's h11 protocol (bench/gateway_h11.py),
  the alternative to httptools + the limits of services/gateway/edge.py that bounds a
  request head by itself;
- `bridge-mesh@REF` (with `--baseline-ref REF`): the bridge-mesh of another git
  revision, checked out into a temporary worktree (removed at the end) and run
  from there on this venv, so a change is measured side by side with what it
  replaces, on the whole request;
- `grpc-gateway`: grpc-gateway 1.6.4 built from ../shared/anchors/grpc-gateway
  (Debian's Go packages, offline); skipped with a message when the anchor is
  missing or does not build.

REST load is wrk (1 thread, 16 connections) POSTing `{"message":"hi","n":"3"}`
to `/v1/echo`; a Lua `response` hook counts every answer that is not a 200 with
exactly the expected body, and a run with any such answer (or socket error)
fails the bench. Rounds alternate the order (A B C D, D C B A, ...); ratios are
taken within each round, because only side-by-side figures mean anything on a
shared machine. Per run it also reports the CPU time per request of the bridge
process and of the backend (from /proc), which drift less than throughput: with
core 0 saturated, throughput is the inverse of their sum, so the last column of
the ratios (that sum, inverted) should agree with the throughput ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
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

from bench import echo
from bench.unary import (
    CLIENT_CORE,
    REPO,
    SERVER_CORE,
    Server,
    frame,
    h2load,
    preflight,
    start_process,
    stop_server,
)

ANCHOR = REPO.parent / "shared" / "anchors" / "grpc-gateway"
BODY = '{"message":"hi","n":"3"}'
CONNECTIONS = 16
RATIOS = (
    ("bridge / grpc-gateway", "bridge", "grpc-gateway"),
    ("bridge-mesh / grpc-gateway", "bridge-mesh", "grpc-gateway"),
    ("bridge / direct gRPC", "bridge", "direct"),
    ("grpc-gateway / direct gRPC", "grpc-gateway", "direct"),
    ("bridge-mesh / bridge", "bridge-mesh", "bridge"),
    ("bridge-mesh / bridge-mesh-h11", "bridge-mesh", "bridge-mesh-h11"),
)
LUA = """\
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status ~= 200 or body ~= '{body}' then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("bad") end
  io.write(string.format("bad responses: %d\\n", total))
end
"""
MESH_TOML = """\
host = "127.0.0.1"
data_dir = "{data_dir}"
log_level = "warning"
grace_period = "1s"

[services.echo]          # the bench backend, as a member of the mesh (bridge-mesh)
package = "bench.v1"
port = {backend_port}

[gateway]
port = 0
max_timeout = "60s"
"""
_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(m?s)")
_WRK_BAD = re.compile(r"bad responses: (\d+)")


@dataclass(frozen=True)
class Run:
    variant: str
    rate: float
    """Requests (or gRPC calls) per second."""
    front_us: float
    """CPU time of the bridge process per request (0 for direct)."""
    backend_us: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def build_grpc_gateway(dest: Path) -> Path | None:
    """The anchor's grpc-gateway binary, built by its own script; None (with the reason printed) if not."""
    script = ANCHOR / "build.sh"
    if not script.is_file():
        print(f"bench: skipping grpc-gateway: {script} is missing (the anchor lives next to the repository)")
        return None
    print(f"building grpc-gateway with {script} (installs Debian's Go packages the first time)", flush=True)
    try:
        built = subprocess.run(
            ["bash", str(script), str(dest)], capture_output=True, text=True, timeout=1800, check=False
        )
    except subprocess.TimeoutExpired:
        print("bench: skipping grpc-gateway: its build took more than 30 minutes")
        return None
    binary = dest / "gateway"
    if built.returncode != 0 or not binary.is_file():
        tail = "\n".join((built.stdout + built.stderr).strip().splitlines()[-15:])
        print(f"bench: skipping grpc-gateway: build.sh failed (exit {built.returncode}):\n{tail}")
        return None
    return binary


@contextmanager
def baseline_tree(ref: str) -> Iterator[Path]:
    """`ref` checked out (detached) in a temporary git worktree, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="rideshare-bench-baseline-"))
    added = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), ref],
        capture_output=True,
        text=True,
        check=False,
    )
    if added.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise SystemExit(f"bench: --baseline-ref {ref}: git worktree add failed: {added.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)


def baseline_env(tree: Path) -> dict[str, str]:
    """Imports from `tree` first: its packages before the editable install of this one (and no
    current directory on the path), its generated code before ours."""
    return {
        **os.environ,
        "MESH_SUPERVISED": "1",
        "PYTHONSAFEPATH": "1",
        "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "generated")]),
    }


@contextmanager
def servers(
    workdir: Path, args: argparse.Namespace, gateway_binary: Path | None, baseline: Path | None = None
) -> Iterator[dict[str, Server]]:
    started: dict[str, Server] = {}
    try:
        backend = start_process(
            "backend", [sys.executable, "-m", "bench.echo", "--max-seconds", str(args.max_seconds)]
        )
        started["backend"] = started["direct"] = backend
        descriptors = echo.write_descriptor_set(workdir / "echo.binpb")
        config = workdir / "mesh.toml"
        config.write_text(MESH_TOML.format(data_dir=workdir / "data", backend_port=backend.port))
        mesh = [sys.executable, "-m", "services.mesh.cli", "--config", str(config), "gateway"]
        common = ["--descriptor-set", str(descriptors), "--no-auth"]
        env = {**os.environ, "MESH_SUPERVISED": "1"}
        port = free_port()
        started["bridge"] = start_process(
            "bridge",
            [*mesh, "--upstream", f"127.0.0.1:{backend.port}", *common, "--listen", f"127.0.0.1:{port}"],
            port=port,
            env=env,
        )
        port = free_port()
        started["bridge-mesh"] = start_process(
            "bridge-mesh", [*mesh, *common, "--listen", f"127.0.0.1:{port}"], port=port, env=env
        )
        port = free_port()
        h11 = [sys.executable, "-m", "bench.gateway_h11", "--config", str(config), "gateway"]
        started["bridge-mesh-h11"] = start_process(
            "bridge-mesh-h11", [*h11, *common, "--listen", f"127.0.0.1:{port}"], port=port, env=env
        )
        if baseline is not None:
            port = free_port()
            name = f"bridge-mesh@{args.baseline_ref}"
            started[name] = start_process(
                name, [*mesh, *common, "--listen", f"127.0.0.1:{port}"], port=port, env=baseline_env(baseline)
            )
        if gateway_binary is not None:
            port = free_port()
            started["grpc-gateway"] = start_process(
                "grpc-gateway",
                [
                    str(gateway_binary),
                    "-listen",
                    f"127.0.0.1:{port}",
                    "-backend",
                    f"127.0.0.1:{backend.port}",
                ],
                port=port,
            )
        yield started
    finally:
        for name, server in started.items():
            if name != "direct":
                stop_server(server)


def post(port: int) -> tuple[int, bytes]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", echo.HTTP_PATH, BODY, {"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check(server: Server) -> None:
    """One real request: status 200 and exactly the expected JSON (the same bytes from every bridge)."""
    deadline = time.monotonic() + 20
    while True:
        status, body = post(server.port)
        if (status, body) == (200, BODY.encode()):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {server.variant} answered {status} {body!r}, not 200 {BODY}")
        time.sleep(0.2)  # a channel may still be connecting


def wrk(server: Server, backend: Server, script: Path, seconds: float) -> Run:
    command = [
        "taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--timeout", "5s",
        "-s", str(script), f"http://127.0.0.1:{server.port}{echo.HTTP_PATH}",
    ]  # fmt: skip
    front_before, backend_before = server.cpu_seconds(), backend.cpu_seconds()
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    front, back = server.cpu_seconds() - front_before, backend.cpu_seconds() - backend_before
    out = result.stdout
    rate, total, bad = _WRK_RATE.search(out), _WRK_TOTAL.search(out), _WRK_BAD.search(out)
    if result.returncode != 0 or not (rate and total and bad):
        raise SystemExit(f"bench: wrk failed against {server.variant}:\n{out}\n{result.stderr}")
    problems = [line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket errors" in line]
    if int(bad.group(1)):
        problems.append(f"{bad.group(1)} responses were not 200 {BODY}")
    if problems:
        raise SystemExit(f"bench: bad run against {server.variant}: {'; '.join(problems)}")
    requests = int(total.group(1))
    return Run(server.variant, float(rate.group(1)), front / requests * 1e6, back / requests * 1e6)


def direct(backend: Server, framed: Path, calls: int, response_bytes: int) -> Run:
    run = h2load(backend, framed, calls, response_bytes, method=echo.METHOD)
    return Run("direct", run.calls_per_s, 0.0, run.cpu_us_per_call)


def measure(
    args: argparse.Namespace, workdir: Path, gateway_binary: Path | None, baseline: Path | None = None
) -> tuple[list[Run], list[str]]:
    script = workdir / "post.lua"
    script.write_text(LUA.format(body=BODY))
    request_class, response_class = echo.message_classes()
    framed = workdir / "framed.bin"
    framed.write_bytes(frame(request_class(message="hi", n=3).SerializeToString()))
    response_bytes = len(frame(response_class(message="hi", n=3).SerializeToString()))
    calls = max(1000, int(args.seconds * 3000))
    runs: list[Run] = []
    with servers(workdir, args, gateway_binary, baseline) as started:
        variants = [v for v in started if v != "backend"]  # in the order they started
        backend = started["backend"]
        for variant in variants[1:]:
            check(started[variant])

        def one(variant: str, seconds: float) -> Run:
            if variant == "direct":
                return direct(backend, framed, int(calls * seconds / args.seconds), response_bytes)
            return wrk(started[variant], backend, script, seconds)

        for variant in variants:
            one(variant, args.warmup)
        for number in range(args.rounds):
            order = variants if number % 2 == 0 else list(reversed(variants))
            for variant in order:
                run = one(variant, args.seconds)
                runs.append(run)
                front = f"bridge {run.front_us:4.0f} us CPU/req  " if variant != "direct" else " " * 26
                print(
                    f"round {number + 1}/{args.rounds} {variant:>12}: {run.rate:8,.0f} req/s  {front}"
                    f"backend {run.backend_us:4.0f} us CPU/req",
                    flush=True,
                )
        for variant in variants[1:]:
            check(started[variant])
    return runs, variants


def report(runs: list[Run], variants: list[str], rounds: int) -> str:
    ratios = [*RATIOS]
    ratios += [(f"bridge-mesh / {v}", "bridge-mesh", v) for v in variants if v.startswith("bridge-mesh@")]
    by_variant = {v: [r for r in runs if r.variant == v] for v in variants}
    lines = [
        "| variant | median req/s | min - max | bridge CPU us/req (median) | backend CPU us/req (median) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for variant, mine in by_variant.items():
        rates = [r.rate for r in mine]
        front = f"{statistics.median(r.front_us for r in mine):.0f}" if variant != "direct" else "-"
        lines.append(
            f"| {variant} | {statistics.median(rates):,.0f} | {min(rates):,.0f} - {max(rates):,.0f} "
            f"| {front} | {statistics.median(r.backend_us for r in mine):.0f} |"
        )
    lines += [
        "",
        "| ratio (throughput) | of medians | per round: median (min - max) | core-0 CPU/req, inverted |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, top, bottom in ratios:
        if top not in by_variant or bottom not in by_variant:
            continue
        per_round = [by_variant[top][i].rate / by_variant[bottom][i].rate for i in range(rounds)]
        medians = statistics.median(r.rate for r in by_variant[top]) / statistics.median(
            r.rate for r in by_variant[bottom]
        )
        cpu = statistics.median(r.front_us + r.backend_us for r in by_variant[bottom]) / statistics.median(
            r.front_us + r.backend_us for r in by_variant[top]
        )
        lines.append(
            f"| {label} | {medians:.2f} | {statistics.median(per_round):.2f} "
            f"({min(per_round):.2f} - {max(per_round):.2f}) | {cpu:.2f} |"
        )
    lines += ["", "Per round, as measured:"]
    for label, top, bottom in ratios:
        if top in by_variant and bottom in by_variant:
            per_round = [by_variant[top][i].rate / by_variant[bottom][i].rate for i in range(rounds)]
            lines.append(f"- {label}: {', '.join(f'{r:.3f}' for r in per_round)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Echo over gRPC, through our bridge, through grpc-gateway.")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 s (about a minute), a smoke run")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 5, quick 3; at least 3)")
    parser.add_argument("--seconds", type=float, help="seconds per run (default 10, quick 3)")
    parser.add_argument(
        "--warmup", type=float, help="seconds per variant before measuring (default 5, quick 2)"
    )
    parser.add_argument("--gateway-dir", type=Path, help="where grpc-gateway is built (default $TMPDIR)")
    parser.add_argument("--no-grpc-gateway", action="store_true", help="skip building and measuring it")
    parser.add_argument("--max-seconds", type=float, default=1800, help="servers stop after this, regardless")
    parser.add_argument(
        "--baseline-ref",
        metavar="REF",
        help="also run the bridge-mesh of this git revision (a temporary worktree), side by side",
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup or (2.0 if args.quick else 5.0)
    if args.rounds < 3 or not 0 < args.seconds <= 600 or not 0 < args.warmup <= 600:
        parser.error("--rounds must be at least 3, --seconds and --warmup between 0 and 600")
    preflight()
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk not found; `make bench` installs it (Debian package wrk)")
    dest = args.gateway_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "grpc-gateway-anchor"
    binary = None if args.no_grpc_gateway else build_grpc_gateway(dest)
    print(
        f"POST {echo.HTTP_PATH} {BODY}: {args.rounds} rounds x {args.seconds:g} s per variant, wrk -t1 "
        f"-c{CONNECTIONS} on core {CLIENT_CORE}; backend and bridges on core {SERVER_CORE}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rideshare-bench-rest-")))
        baseline = stack.enter_context(baseline_tree(args.baseline_ref)) if args.baseline_ref else None
        runs, variants = measure(args, workdir, binary, baseline)
    print()
    print(report(runs, variants, args.rounds))
    print(f"\n{time.monotonic() - started:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
