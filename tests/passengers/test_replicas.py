"""Two passengers replicas (two servers, each with its own connections) on one database, both engines:
the same request raced on both is one write and one replay (AIP-155 across replicas)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rideshare.passengers.v1 import passengers_pb2 as pb

from services.runtime.config import load_config
from tests import postgres
from tests.conftest import MESH_TOML, ServeFactory, write_mesh_file


@pytest.fixture(params=postgres.ENGINES)
def config(request: pytest.FixtureRequest, tmp_path: Path):
    """The one-service mesh on the test's engine: a SQLite file, or a database of its own."""
    text = MESH_TOML
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_databases").create("passengers")
        text += f'\n[storage]\nbackend = "postgres"\ndsn = "{dsn}"\npool_max = 4\n'
    return load_config(write_mesh_file(tmp_path, text), env={})


def test_the_same_create_raced_on_two_replicas_is_one_passenger(serve: ServeFactory, config):
    replicas = [serve("passengers", config=config) for _ in range(2)]

    async def race(n: int) -> list[pb.Passenger]:
        request = pb.CreatePassengerRequest(
            passenger=pb.Passenger(display_name="Ada", email=f"ada{n}@example.com"), request_id=f"create-{n}"
        )
        return list(await asyncio.gather(*(r.stub.CreatePassenger(request) for r in replicas * 4)))

    for n in range(10):  # ten keys, each sent eight times at once, four to each replica
        answers = replicas[0].call(race(n))
        assert all(a == answers[0] for a in answers), f"key {n}: one answer, replayed"

    listed = replicas[1].call(replicas[1].stub.ListPassengers(pb.ListPassengersRequest(page_size=100)))
    assert sorted(p.email for p in listed.passengers) == sorted(f"ada{n}@example.com" for n in range(10))
