"""The bridge's HTTP/2 client against the alternatives: `python -m bench.clients` (in `make bench`).

What it answers: `mesh gateway --upstream` calls its backend with its own
HTTP/2 + HPACK client (`services/gateway/wire.py`). Would the `h2` library
(python-hyper: h2 + hpack, the well-kept pure-Python HTTP/2 stack), or
grpc.aio, do the same job for less CPU? The bridge and its backend share a
core, so the client's CPU per call is what the bridge's throughput pays.

What runs: the Echo backend of `bench.rest` (bench/echo.py, grpc.aio) pinned
to core 0; each client in a process of its own pinned to core 1 makes the
same unary calls (`bench.v1.Echo/Say`, `{"message":"hi","n":3}` as bytes, so
no protobuf work on the client) with a fixed number in flight over one
connection, each with a deadline (`grpc-timeout`) as the bridge sends it,
on uvloop as in the bridge, and checks every answer's bytes. Per run it reports the client process's CPU
time per call (user + system of all its threads, `time.process_time()`
around the measured calls) and calls/s. The calls/s are the backend's (it
saturates core 0 first), not the question. Rounds alternate the order of
the clients; ratios are taken within each round.

The clients:
- `wire`: `services.gateway.wire.Channel.unary`, exactly what the bridge calls;
- `h2`: the same calls on `h2.connection.H2Connection` (header encoding by
  its `hpack`), in the smallest asyncio protocol that does a unary gRPC call
  (`H2Client` below): what the bridge would run on if it used the library;
- `grpc.aio`: a generic `unary_unary` on a grpc.aio channel with bytes in
  and out, what the bridge uses inside the mesh.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any, cast

from bench import echo
from bench.unary import CLIENT_CORE, REPO, start_process, stop_server

CLIENTS = ("wire", "h2", "grpc.aio")
PATH = echo.METHOD.encode()
DEADLINE = 10.0


def request_bytes() -> tuple[bytes, bytes]:
    """The request every client sends, and the response bytes it must get back."""
    request_class, response_class = echo.message_classes()
    return (
        request_class(message="hi", n=3).SerializeToString(),
        response_class(message="hi", n=3).SerializeToString(),
    )


class H2Client(asyncio.Protocol):
    """Unary gRPC calls on one `h2` connection: what the bridge's client would be on the library."""

    def __init__(self, loop: asyncio.AbstractEventLoop, authority: bytes) -> None:
        import h2.config
        import h2.connection

        self.loop = loop
        self.authority = authority
        self.connection = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, tuple[asyncio.Future[bytes], list[bytes]]] = {}
        self.ready: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.connection.initiate_connection()
        self.transport.write(self.connection.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        for future, _ in self.calls.values():
            if not future.done():
                future.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        import h2.events

        connection = self.connection
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self.calls[event.stream_id][1].append(event.data)
                connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                future, chunks = self.calls.pop(event.stream_id)
                status = dict(event.headers).get(b"grpc-status")
                if status != b"0":
                    future.set_exception(RuntimeError(f"grpc-status {status!r}"))
                else:
                    future.set_result(b"".join(chunks)[5:])
            elif isinstance(event, h2.events.StreamReset):
                future, _ = self.calls.pop(event.stream_id)
                future.set_exception(RuntimeError(f"stream reset {event.error_code}"))
            elif isinstance(event, h2.events.RemoteSettingsChanged) and not self.ready.done():
                self.ready.set_result(None)
        pending = connection.data_to_send()
        if pending and self.transport is not None:
            self.transport.write(pending)

    async def unary(self, request: bytes, deadline: float) -> bytes:
        connection = self.connection
        stream_id = connection.get_next_available_stream_id()
        timeout = f"{max(int((deadline - self.loop.time()) * 1000), 1)}m".encode()
        connection.send_headers(
            stream_id,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", PATH),
                (b":authority", self.authority),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"user-agent", b"rideshare-gateway"),
                (b"grpc-timeout", timeout),
            ],
        )
        connection.send_data(stream_id, b"\x00" + len(request).to_bytes(4, "big") + request, end_stream=True)
        future: asyncio.Future[bytes] = self.loop.create_future()
        self.calls[stream_id] = (future, [])
        assert self.transport is not None
        self.transport.write(connection.data_to_send())
        return await future


async def _caller(kind: str, port: int) -> tuple[Any, Any]:
    """A function making one call, and a coroutine function closing what it opened."""
    loop = asyncio.get_running_loop()
    address = f"127.0.0.1:{port}"
    if kind == "wire":
        from services.gateway import wire

        channel = wire.Channel(address)

        async def call_wire(request: bytes) -> bytes:
            message, _, _ = await channel.unary(PATH, request, [], loop.time() + DEADLINE)
            return message

        return call_wire, channel.close
    if kind == "h2":
        _, client = await loop.create_connection(lambda: H2Client(loop, address.encode()), "127.0.0.1", port)
        await client.ready

        async def call_h2(request: bytes) -> bytes:
            return await client.unary(request, loop.time() + DEADLINE)

        async def close_h2() -> None:
            if client.transport is not None:
                client.transport.close()

        return call_h2, close_h2
    import grpc

    aio_channel = grpc.aio.insecure_channel(address)
    method: Any = aio_channel.unary_unary(echo.METHOD)

    async def call_aio(request: bytes) -> bytes:
        reply: bytes = await method(request, timeout=DEADLINE)
        return reply

    return call_aio, aio_channel.close


async def run_client(kind: str, port: int, calls: int, in_flight: int) -> dict[str, float]:
    """`calls` calls, `in_flight` at a time, after a warm-up; every answer checked."""
    request, expected = request_bytes()
    call, close = await _caller(kind, port)
    remaining = 0

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            answer = await call(request)
            if answer != expected:
                raise SystemExit(f"bench.clients: {kind} got {answer!r}, expected {expected!r}")

    try:
        remaining = max(calls // 10, 100)
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        remaining = calls
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    finally:
        await close()
    return {"calls_per_s": calls / wall, "cpu_us_per_call": cpu / calls * 1e6}


def measure_once(kind: str, port: int, calls: int, in_flight: int) -> dict[str, float]:
    """One run of one client, in a process of its own on the client core."""
    output = subprocess.run(
        [
            *("taskset", "-c", CLIENT_CORE, sys.executable, "-m", "bench.clients", "--run", kind, str(port)),
            *("--calls", str(calls), "--in-flight", str(in_flight)),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    ).stdout
    result: dict[str, float] = json.loads(output)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1,000 calls, a smoke run")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 5, quick 3)")
    parser.add_argument("--calls", type=int, help="calls per run (default 5,000, quick 1,000)")
    parser.add_argument("--in-flight", type=int, default=16, help="calls in flight (default 16)")
    parser.add_argument("--max-seconds", type=float, default=900, help="the backend stops after this")
    parser.add_argument("--run", nargs=2, metavar=("CLIENT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    calls = args.calls or (1000 if args.quick else 5000)
    if args.run:
        kind, port = args.run
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            print(json.dumps(runner.run(run_client(kind, int(port), calls, args.in_flight))))
        return
    try:
        import h2  # noqa: F401
    except ImportError:
        raise SystemExit("bench.clients: the h2 package is missing (make bench installs it)") from None
    rounds = args.rounds or (3 if args.quick else 5)
    backend = start_process(
        "backend", [sys.executable, "-m", "bench.echo", "--max-seconds", str(args.max_seconds)]
    )
    print(
        f"unary Echo calls, {calls:,} per run, {args.in_flight} in flight on one connection; "
        f"backend on core 0, each client alone on core {CLIENT_CORE}; {rounds} alternating rounds",
        flush=True,
    )
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in CLIENTS}
    try:
        for number in range(rounds):
            order = CLIENTS if number % 2 == 0 else tuple(reversed(CLIENTS))
            for kind in order:
                result = measure_once(kind, backend.port, calls, args.in_flight)
                results[kind].append(result)
                print(
                    f"round {number + 1}/{rounds} {kind:>8}: {result['calls_per_s']:7,.0f} calls/s  "
                    f"client {result['cpu_us_per_call']:5.1f} us CPU/call",
                    flush=True,
                )
    finally:
        stop_server(backend)
    print(report(results, rounds))


def report(results: dict[str, list[dict[str, float]]], rounds: int) -> str:
    lines = [
        "",
        "| client | median calls/s | client CPU us/call: median (min - max) "
        "| CPU/call against wire, per round: median (min - max) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for kind in CLIENTS:
        runs = results[kind]
        cpu = [r["cpu_us_per_call"] for r in runs]
        wire = results["wire"]
        ratios = [r["cpu_us_per_call"] / w["cpu_us_per_call"] for r, w in zip(runs, wire, strict=True)]
        lines.append(
            f"| {kind} | {statistics.median(r['calls_per_s'] for r in runs):,.0f} | "
            f"{statistics.median(cpu):.1f} ({min(cpu):.1f} - {max(cpu):.1f}) | "
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f} - {max(ratios):.2f}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
