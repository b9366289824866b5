"""The drivers' nearby search alone, in-process, with 100 to 10,000 drivers around: `python -m bench.search`.

What it answers: does a search cost the same however many drivers are
around the pickup (issue 12)? Each count gets its own SQLite file in memory
with that many AVAILABLE drivers spread evenly within 5 km of a center;
then the same 300 pickups (within 1 km of it) are searched, radius 5 km,
the nearest 10, as the trip service asks. `--baseline-ref REF` also runs the
store module of another git revision (checked out in a temporary worktree,
imported beside this tree's runtime) on the same data. One process, no gRPC:
the figure is the store's own time per search.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import random
import time
import uuid
from pathlib import Path
from types import ModuleType

from google.type.latlng_pb2 import LatLng
from rideshare.drivers.v1 import drivers_pb2 as pb

from bench.rest import baseline_tree
from bench.trips import CENTER, around
from services.drivers import store as current
from services.runtime.storage import SqliteBackend


def store_of(tree: Path) -> ModuleType:
    """services/drivers/store.py of another tree, imported beside this tree's runtime (its migrations
    directory is the tree's own)."""
    spec = importlib.util.spec_from_file_location("baseline_store", tree / "services/drivers/store.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def per_search(module: ModuleType, drivers: int, searches: int) -> float:
    """Microseconds per search with `drivers` AVAILABLE drivers within 5 km."""
    store = module.DriverStore(SqliteBackend(":memory:", module.MIGRATIONS))
    rng = random.Random(drivers)
    async with store.db.transaction() as tx:
        for number in range(drivers):
            driver = pb.Driver(
                name=f"drivers/{uuid.uuid4().hex}",
                display_name=f"Driver {number}",
                status=pb.DRIVER_STATUS_AVAILABLE,
                location=around(rng, CENTER, 5000),
            )
            await store.insert(tx, driver)
    pickups = [around(rng, CENTER, 1000) for _ in range(searches)]
    began = time.perf_counter()
    for pickup in pickups:
        found = await store.search(LatLng(latitude=pickup.latitude, longitude=pickup.longitude), 5000, 10)
        assert found, "every pickup has drivers within 5 km"
    took = time.perf_counter() - began
    await store.close()
    return took / searches * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DriverStore.search alone, by drivers around.")
    parser.add_argument("--drivers", default="100,1000,10000", help="driver counts (default 100,1000,10000)")
    parser.add_argument("--searches", type=int, default=300, help="searches per count (default 300)")
    parser.add_argument("--baseline-ref", metavar="REF", help="also time the store module of this revision")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.drivers.split(",")]
    with contextlib.ExitStack() as stack:
        variants = {"current": current}
        if args.baseline_ref:
            variants[args.baseline_ref] = store_of(stack.enter_context(baseline_tree(args.baseline_ref)))
        print("| drivers within 5 km | " + " | ".join(f"{v} us/search" for v in variants) + " |")
        print("| ---: | " + " | ".join("---:" for _ in variants) + " |")
        for count in counts:
            times = [asyncio.run(per_search(module, count, args.searches)) for module in variants.values()]
            print(f"| {count:,} | " + " | ".join(f"{t:,.0f}" for t in times) + " |", flush=True)


if __name__ == "__main__":
    main()
