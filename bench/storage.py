"""What a call of the resource kit costs on each engine: `python -m bench.storage` (part of `make bench`).

In one process, the passengers' store over SQLite (a temporary file) and over
PostgreSQL (a temporary database on 127.0.0.1:5432, dropped afterwards):
`Store.create` with a request_id (the write and its request-log entry,
committed), `Store.get` one after another, and `Store.get` many at once (the
pool's connections side by side). Rounds alternate the engines; the first is
a warm-up; the figures are medians per call. No PostgreSQL: it says so and
measures SQLite alone. See docs/benchmarks.md, "Storage engines".
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from rideshare.passengers.v1 import passengers_pb2 as pb

from services.passengers.store import MIGRATIONS, PASSENGERS
from services.runtime.aip import new_id, now
from services.runtime.postgres import PostgresBackend
from services.runtime.resources import Store
from services.runtime.storage import SqliteBackend

SERVER = "postgresql://postgres@127.0.0.1:5432"


async def _round(store: Store[pb.Passenger], creates: int, gets: int) -> tuple[float, float, float]:
    """Microseconds per create, per get, and per get with all of them in flight at once."""
    names = []
    start = time.perf_counter()
    for _ in range(creates):
        made = pb.Passenger(
            name=f"passengers/{new_id()}", display_name="A", email=f"{new_id()}@example.com",
            create_time=now(), update_time=now(),
        )  # fmt: skip
        await store.create(made, pb.CreatePassengerRequest(passenger=made, request_id=new_id()))
        names.append(made.name)
    create = (time.perf_counter() - start) / creates
    start = time.perf_counter()
    for i in range(gets):
        await store.get(names[i % len(names)])
    get = (time.perf_counter() - start) / gets
    start = time.perf_counter()
    await asyncio.gather(*(store.get(names[i % len(names)]) for i in range(gets)))
    at_once = (time.perf_counter() - start) / gets
    return create * 1e6, get * 1e6, at_once * 1e6


async def measure(rounds: int, creates: int, gets: int) -> dict[str, list[tuple[float, float, float]]]:
    with tempfile.TemporaryDirectory(prefix="rideshare-bench-storage-") as directory:
        return await _measure(Path(directory), rounds, creates, gets)


async def _measure(
    directory: Path, rounds: int, creates: int, gets: int
) -> dict[str, list[tuple[float, float, float]]]:
    stores: dict[str, Store[pb.Passenger]] = {}
    stores["sqlite"] = Store(SqliteBackend(directory / "passengers.db", MIGRATIONS), PASSENGERS)
    database = f"bench_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE DATABASE {database}")
    except psycopg.OperationalError as error:
        print(f"PostgreSQL not reachable at {SERVER} ({str(error).strip().splitlines()[0]}): SQLite only")
    else:
        backend = PostgresBackend(f"{SERVER}/{database}", MIGRATIONS, pool_min=4, pool_max=10)
        await backend.open()
        stores["postgres"] = Store(backend, PASSENGERS)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in stores}
    try:
        for number in range(rounds + 1):
            for name, store in stores.items() if number % 2 else reversed(stores.items()):
                figures = await _round(store, creates, gets)
                if number:  # the first round warms up
                    results[name].append(figures)
    finally:
        for store in stores.values():
            await store.close()
        if "postgres" in stores:
            with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
                conn.execute(f"DROP DATABASE {database} WITH (FORCE)")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args(argv)
    rounds, creates, gets = (2, 100, 500) if args.quick else (3, 300, 2000)
    results = asyncio.run(measure(rounds, creates, gets))
    print(f"storage: {rounds} rounds of {creates} creates and {gets} gets per engine, medians per call")
    print(f"{'engine':<10} {'create':>10} {'get':>10} {'get, all at once':>18}")
    for name, figures in results.items():
        create, get, at_once = (statistics.median(f[i] for f in figures) for i in range(3))
        print(f"{name:<10} {create:>8.0f}us {get:>8.0f}us {at_once:>16.0f}us")


if __name__ == "__main__":
    main()
