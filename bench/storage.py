"""What a call of the resource kit costs on each engine: `python -m bench.storage` (part of `make bench`).

In one process, the passengers' store over SQLite (a temporary file) and over
PostgreSQL (a temporary database on 127.0.0.1:5432, dropped afterwards):
`Store.create` with a request_id (the write and its request-log entry,
committed), `Store.get` one after another, and `Store.get` many at once (the
pool's connections side by side). Rounds alternate the engines; the first is
a warm-up; the figures are medians per call. No PostgreSQL: it says so and
measures SQLite alone. See docs/benchmarks.md, "Storage engines".

`--notifications` measures instead what storing notifications in commit
order costs on PostgreSQL (services/notifications/store.py): two replicas
(two backends on one database), each with `--senders` calls of `send` in
flight, notifications stored per second with the sequence lock and without
it (`seq` then in insert order), alternating rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from rideshare.notifications.v1 import notifications_pb2 as npb
from rideshare.passengers.v1 import passengers_pb2 as pb

from services.notifications import store as notifications
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


class _Unordered(PostgresBackend):
    """PostgreSQL without the advisory lock in transactions: notifications numbered in insert order."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with super().transaction() as tx:
            tx.lock = _no_lock  # type: ignore[method-assign]
            yield tx


async def _no_lock(key: str) -> None:
    return None


async def _sends(replicas: list[notifications.NotificationStore], senders: int, count: int) -> float:
    """Notifications stored per second, `senders` at once on each replica, `count` in all."""

    async def sender(store: notifications.NotificationStore, n: int) -> None:
        for _ in range(n):
            draft = npb.Notification(name=f"passengers/p/notifications/{new_id()}", recipient="passengers/p",
                                     title="t", body="b", create_time=now())  # fmt: skip
            await store.send(draft, npb.SendNotificationRequest(notification=draft, request_id=new_id()))

    each = count // (senders * len(replicas))
    start = time.perf_counter()
    await asyncio.gather(*(sender(store, each) for store in replicas for _ in range(senders)))
    return each * senders * len(replicas) / (time.perf_counter() - start)


async def measure_notifications(rounds: int, senders: int, count: int) -> dict[str, list[float]]:
    database = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=3) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    kinds = {"commit order (lock)": PostgresBackend, "insert order (no lock)": _Unordered}
    replicas: dict[str, list[notifications.NotificationStore]] = {}
    try:
        for kind, make in kinds.items():
            replicas[kind] = []
            for _ in range(2):
                backend = make(
                    f"{SERVER}/{database}", notifications.MIGRATIONS, pool_min=senders, pool_max=senders
                )
                await backend.open()
                replicas[kind].append(notifications.NotificationStore(backend))
        results: dict[str, list[float]] = {kind: [] for kind in kinds}
        for number in range(rounds + 1):
            for kind in kinds if number % 2 else reversed(kinds):
                rate = await _sends(replicas[kind], senders, count)
                if number:
                    results[kind].append(rate)
        return results
    finally:
        for stores in replicas.values():
            for store in stores:
                await store.close()
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {database} WITH (FORCE)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--notifications", action="store_true", help="notifications in commit order")
    parser.add_argument(
        "--senders", type=int, default=8, help="with --notifications: sends in flight per replica"
    )
    args = parser.parse_args(argv)
    if args.notifications:
        rounds, count = (2, 400) if args.quick else (4, 2000)
        rates = asyncio.run(measure_notifications(rounds, args.senders, count))
        print(f"notifications: 2 replicas x {args.senders} sends in flight, {rounds} rounds of {count}")
        for kind, figures in rates.items():
            each = ", ".join(f"{r:.0f}" for r in figures)
            print(f"{kind:<24} {statistics.median(figures):>8.0f}/s  (rounds: {each})")
        return
    rounds, creates, gets = (2, 100, 500) if args.quick else (3, 300, 2000)
    results = asyncio.run(measure(rounds, creates, gets))
    print(f"storage: {rounds} rounds of {creates} creates and {gets} gets per engine, medians per call")
    print(f"{'engine':<10} {'create':>10} {'get':>10} {'get, all at once':>18}")
    for name, figures in results.items():
        create, get, at_once = (statistics.median(f[i] for f in figures) for i in range(3))
        print(f"{name:<10} {create:>8.0f}us {get:>8.0f}us {at_once:>16.0f}us")


if __name__ == "__main__":
    main()
