"""The calling side of one gRPC call: what the runtime's client costs over grpc.aio's own: `make bench`.

What it answers: how much of a caller's CPU per call is grpc.aio itself, and
how much the runtime's client adds (one interceptor per call kind: timeout and
deadline propagation, trace headers, metrics and the client span; the mesh's
service config: retries, budget, health checks). It bounds what any Python
caller of gRPC, the REST bridge included, can spend per call.

What runs: `bench.v1.Echo` on a bare grpc.aio server (bench/echo.py, pinned to
core 0), called from this process (pinned to core 1) with 16 calls in flight:

- `aio`: a plain `grpc.aio.insecure_channel`;
- `runtime`: the runtime's `Clients.channel_to` with telemetry at the mesh
  file's defaults (what the gateway's `--upstream` and every service use);
- `sync-future`: grpcio's synchronous channel, `.future()` bridged to the loop.

Rounds alternate the order; the figure is this process's CPU time (all its
threads: the loop and grpc's event-engine threads) per call, which with the
server on the other core is the caller's whole cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import uvloop
from google.protobuf import descriptor_pool, message_factory

from bench import echo
from bench.unary import CLIENT_CORE, start_process, stop_server
from services.runtime.client import Clients
from services.runtime.config import load_config
from services.runtime.telemetry import Telemetry

IN_FLIGHT = 16
VARIANTS = ("aio", "runtime", "sync-future")


def _messages() -> tuple[Any, Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    for file in echo.descriptor_set().file:
        pool.Add(file)
    request = message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.v1.EchoRequest"))
    response = message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.v1.EchoResponse"))
    return request, response, pool.FindServiceByName(echo.SERVICE)


async def _measure(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    """CPU microseconds of this process per call, `IN_FLIGHT` calls at a time, after a warm-up."""
    for _ in range(200):
        await call()
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return (time.process_time() - started) / calls * 1e6


async def _variant(name: str, target: str, config_path: Path, calls: int) -> float:
    request_type, response_type, service = _messages()
    request = request_type(message="hi", n=3)
    kinds = {
        "request_serializer": request_type.SerializeToString,
        "response_deserializer": response_type.FromString,
    }
    if name == "sync-future":
        channel = grpc.insecure_channel(target)
        say = channel.unary_unary(echo.METHOD, **kinds)
        loop = asyncio.get_running_loop()

        def bridged() -> asyncio.Future[Any]:
            answer: asyncio.Future[Any] = loop.create_future()
            future = say.future(request, timeout=10)
            future.add_done_callback(lambda done: loop.call_soon_threadsafe(answer.set_result, done.result()))
            return answer

        try:
            return await _measure(bridged, calls)
        finally:
            channel.close()
    if name == "aio":
        aio = grpc.aio.insecure_channel(target)
    else:
        config = load_config(config_path, env={})
        aio = Clients(config, "gateway", Telemetry(config, "gateway")).channel_to(target, [service])
    say_aio = aio.unary_unary(echo.METHOD, **kinds)
    try:
        return await _measure(lambda: say_aio(request), calls)
    finally:
        await aio.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Caller CPU per gRPC call: grpc.aio, the runtime, sync.")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3,000 calls")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 5, quick 3)")
    parser.add_argument("--calls", type=int, help="calls per run (default 20,000, quick 3,000)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    calls = args.calls or (3000 if args.quick else 20000)
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    backend = start_process("backend", [sys.executable, "-m", "bench.echo", "--max-seconds", "600"])
    runs: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        with tempfile.TemporaryDirectory(prefix="rideshare-bench-client-") as folder:
            config = Path(folder) / "mesh.toml"
            config.write_text(
                f'host = "127.0.0.1"\ndata_dir = "{folder}/data"\n\n'
                f'[services.echo]\npackage = "bench.v1"\nport = {backend.port}\n'
            )
            target = f"127.0.0.1:{backend.port}"
            for number in range(rounds):
                order = VARIANTS if number % 2 == 0 else tuple(reversed(VARIANTS))
                for name in order:
                    runs[name].append(uvloop.run(_variant(name, target, config, calls)))
    finally:
        stop_server(backend)
    print(f"caller CPU per unary call, {rounds} rounds x {calls:,} calls, {IN_FLIGHT} in flight (us, median)")
    for name in VARIANTS:
        print(f"  {name:<12} {statistics.median(runs[name]):7.1f}   per round: "
              + ", ".join(f"{value:.0f}" for value in runs[name]))  # fmt: skip
    ratios = [r / a for r, a in zip(runs["runtime"], runs["aio"], strict=True)]
    print(f"  runtime / aio (CPU per call): {statistics.median(ratios):.2f} "
          f"(per round {min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
