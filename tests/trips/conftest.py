"""Fixtures of the trip tests: a store on a temp file and helpers that fill it; the whole mesh running."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from rideshare.trips.v1.trips_pb2 import Trip

from services.runtime.resources import fingerprint
from services.runtime.storage import SqliteBackend
from services.trips import domain
from services.trips.notices import Notice
from services.trips.store import MIGRATIONS, TripStore

from ..whole_mesh import Mesh
from .test_domain import quote, request


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TripStore]:
    opened = open_store(tmp_path)
    yield opened
    asyncio.run(opened.close())


def open_store(directory: Path) -> TripStore:
    """The trip store on `directory`'s trips.db: each call is another connection, as a replica has."""
    return TripStore(SqliteBackend(directory / "trips.db", MIGRATIONS))


def notice(trip: Trip, title: str = "Hello") -> list[Notice]:
    return [Notice(trip.passenger, title, "Body", trip.name)]


async def assigned(
    store: TripStore, request_id: str = "", passenger: str = "passengers/p1", driver: str = "drivers/d1"
) -> Trip:
    """A DRIVER_ASSIGNED trip written the way RequestTrip writes it, with one queued notification."""
    rpc = request(request_id=request_id, passenger=passenger)
    matching = await store.add_matching(domain.new_trip(rpc, quote()), request_id, fingerprint(rpc))
    return await store.finish_matching(matching, driver, rpc, notice)


@pytest.fixture
def mesh(runner: asyncio.Runner, tmp_path: Path) -> Iterator[Mesh]:
    """All six services running in this process with fresh databases; stopped afterwards."""
    running = Mesh(runner, tmp_path)
    try:
        running.start()
        yield running
    finally:
        running.close()
