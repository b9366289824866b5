"""Fixtures of the trip tests: a store on a temp file and helpers that fill it; the whole mesh running."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from rideshare.trips.v1.trips_pb2 import Trip

from services.runtime.storage import Database, fingerprint
from services.trips import domain
from services.trips.notices import Notice
from services.trips.store import MIGRATIONS, SqliteTripStore

from ..whole_mesh import Mesh
from .test_domain import quote, request


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteTripStore]:
    opened = SqliteTripStore(Database(tmp_path / "trips.db", MIGRATIONS))
    yield opened
    opened.close()


def notice(trip: Trip, title: str = "Hello") -> list[Notice]:
    return [Notice(trip.passenger, title, "Body", trip.name)]


def assigned(
    store: SqliteTripStore, request_id: str = "", passenger: str = "passengers/p1", driver: str = "drivers/d1"
) -> Trip:
    """A DRIVER_ASSIGNED trip written the way RequestTrip writes it, with one queued notification."""
    rpc = request(request_id=request_id, passenger=passenger)
    matching = store.add_matching(domain.new_trip(rpc, quote()), request_id, fingerprint(rpc))
    store.set_candidate(matching.id, driver)
    return store.finish_matching(matching.id, driver, rpc, notice)


@pytest.fixture
def mesh(runner: asyncio.Runner, tmp_path: Path) -> Iterator[Mesh]:
    """All six services running in this process with fresh databases; stopped afterwards."""
    running = Mesh(runner, tmp_path)
    try:
        running.start()
        yield running
    finally:
        running.close()
