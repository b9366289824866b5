"""What telemetry costs per call: `python -m bench.telemetry [--rounds N] [--calls N]`.

The same runtime server (GetPassenger, as in `bench.unary`) four times, each
with other `[telemetry]` settings, plus the bare grpc.aio server, measured
side by side in alternating rounds:

- `off`: no metrics, no traces (the runtime before telemetry);
- `metrics`: Prometheus counters, histogram and gauge per call, no traces;
- `default`: what mesh.toml ships (metrics, traces to a file, 1% of new traces recorded);
- `all traces`: metrics and every call recorded as a span (`sample_ratio = 1.0`).

Ratios are against `off`, per round (throughput) and as inverted server CPU
time per call, which is steadier on a shared machine. h2load sends no
`traceparent`, so every call starts a new trace: `default` records about 1%.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from rideshare.passengers.v1.passengers_pb2 import GetPassengerRequest

from bench import unary

SETTINGS = {
    "off": '[telemetry]\nmetrics = false\ntraces = "off"\n',
    "metrics": '[telemetry]\ntraces = "off"\n',
    "default": "",
    "all traces": "[telemetry]\nsample_ratio = 1.0\n",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args(argv)
    unary.preflight()
    with tempfile.TemporaryDirectory(prefix="rideshare-bench-") as name:
        workdir = Path(name)
        started: dict[str, unary.Server] = {}
        try:
            for variant, extra in SETTINGS.items():
                config = workdir / f"{variant.replace(' ', '-')}.toml"
                config.write_text(unary.MESH_TOML.format(data_dir=workdir / "data") + extra)
                started[variant] = unary.start_server("runtime", config, 1800)
                started[variant].variant = variant
            bare = workdir / "aio.toml"
            bare.write_text(unary.MESH_TOML.format(data_dir=workdir / "data"))
            started["bare aio"] = unary.start_server("aio", bare, 1800)
            started["bare aio"].variant = "bare aio"
            passenger = unary.create_passenger(started["off"].port)
            framed = workdir / "framed.bin"
            framed.write_bytes(unary.frame(GetPassengerRequest(name=passenger.name).SerializeToString()))
            response_bytes = len(unary.frame(passenger.SerializeToString()))
            for server in started.values():
                unary.h2load(server, framed, 1000, response_bytes)
            runs: dict[str, list[unary.Run]] = {variant: [] for variant in started}
            for number in range(args.rounds):
                order = list(started) if number % 2 == 0 else list(reversed(started))
                for variant in order:
                    run = unary.h2load(started[variant], framed, args.calls, response_bytes)
                    runs[variant].append(run)
                    print(
                        f"round {number + 1}/{args.rounds} {variant:>10}: {run.calls_per_s:7,.0f} calls/s "
                        f"{run.cpu_us_per_call:5.0f} us CPU/call",
                        flush=True,
                    )
        finally:
            for server in started.values():
                unary.stop_server(server)
    print("\n| variant | median calls/s | server CPU us/call | throughput / off, per round | CPU, inverted |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = runs["off"]
    base_cpu = statistics.median(r.cpu_us_per_call for r in base)
    for variant, mine in runs.items():
        ratios = [a.calls_per_s / b.calls_per_s for a, b in zip(mine, base, strict=True)]
        cpu = statistics.median(r.cpu_us_per_call for r in mine)
        rate = statistics.median(r.calls_per_s for r in mine)
        spread = f"{statistics.median(ratios):.3f} ({min(ratios):.2f} - {max(ratios):.2f})"
        print(f"| {variant} | {rate:,.0f} | {cpu:.0f} | {spread} | {base_cpu / cpu:.3f} |")


if __name__ == "__main__":
    main()
