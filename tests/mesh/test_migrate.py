"""`mesh migrate`, and a service choosing its storage in the mesh file: SQLite, or PostgreSQL by a key."""

from __future__ import annotations

import dataclasses
import sqlite3

import psycopg
import pytest
from rideshare.passengers.v1 import passengers_pb2 as pb

from services.mesh import signing
from services.mesh.cli import main
from services.runtime.config import load_config
from services.runtime.errors import Unavailable
from services.runtime.server import _serve, create_server
from tests.ports import free_port

from ..conftest import MESH_TOML, write_mesh_file

TWO_SERVICES = MESH_TOML + "\n[services.trips]\nport = 0\n"
ALL = "0000_runtime, 0001_init, 0002_sign_in, 0003_sign_in_by_client"
"""The passengers' migrations."""


def migrate(path, *args: str) -> int:
    return main(["--config", str(path), "migrate", *args])


def test_check_lists_what_is_pending_without_making_files_then_migrate_applies_it(tmp_path, capsys):
    path = write_mesh_file(tmp_path, TWO_SERVICES)
    data = tmp_path / "data"

    assert migrate(path, "--check") == 1
    out = capsys.readouterr().out
    assert f"passengers  {data}/passengers/passengers.db  pending: {ALL}" in out
    assert "trips       " in out
    assert not data.exists()

    assert migrate(path, "passengers") == 0
    assert f"applied: {ALL}" in capsys.readouterr().out
    assert migrate(path, "--check", "passengers") == 0
    assert "passengers  " in (out := capsys.readouterr().out)
    assert out.rstrip().endswith("up to date")
    with sqlite3.connect(data / "passengers" / "passengers.db") as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (3,)


def test_migrating_an_unknown_service_names_the_known_ones(tmp_path, capsys):
    assert migrate(write_mesh_file(tmp_path), "nobody") == 2
    assert "no such service (known: passengers)" in capsys.readouterr().err


def postgres_mesh(tmp_path, dsn: str):
    text = MESH_TOML + f'\n[storage]\nbackend = "postgres"\ndsn = "{dsn}"\npool_max = 3\n'
    return write_mesh_file(tmp_path, text)


def test_migrate_creates_each_services_postgres_database_and_applies_its_migrations(
    tmp_path, capsys, postgres_databases
):
    path = postgres_mesh(tmp_path, postgres_databases.per_service())
    database = f"127.0.0.1:5432/{postgres_databases.prefix}_passengers"

    assert migrate(path, "--check") == 1
    assert f"passengers  {database}  pending: {ALL}" in capsys.readouterr().out
    assert migrate(path) == 0
    assert f"{database}  applied: {ALL}" in capsys.readouterr().out
    assert migrate(path, "--check") == 0
    assert capsys.readouterr().out.rstrip().endswith("up to date")
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{postgres_databases.prefix}_passengers") as c:
        assert c.execute("SELECT count(*) FROM schema_migrations").fetchone() == (4,)


def test_a_service_on_postgres_serves_from_its_database_and_finds_emails_whatever_their_case(
    tmp_path, serve, postgres_databases
):
    path = postgres_mesh(tmp_path, postgres_databases.create("svc"))
    first = serve(config=load_config(path, env={}))
    created = first.call(
        first.stub.CreatePassenger(
            pb.CreatePassengerRequest(passenger=pb.Passenger(display_name="Ada", email="Ada@Example.com"))
        )
    )
    taken = first.fail(
        first.stub.CreatePassenger(
            pb.CreatePassengerRequest(passenger=pb.Passenger(display_name="Eve", email="ada@EXAMPLE.com"))
        )
    )
    assert taken.info.reason == "PASSENGER_EMAIL_TAKEN"
    first.stop()

    second = serve(config=load_config(path, env={}))  # the same database: nothing migrates twice
    assert second.call(second.stub.GetPassenger(pb.GetPassengerRequest(name=created.name))) == created


def test_signing_in_on_postgres_finds_the_email_in_any_case_counts_failures_and_rotates_sessions(
    tmp_path, serve, postgres_databases
):
    config = load_config(postgres_mesh(tmp_path, postgres_databases.create("sign_in")), env={})
    signing.create(config)
    running = serve(config=config)
    draft = pb.Passenger(display_name="Ada", email="Ada@Example.com", password="correct horse")
    created = running.call(running.stub.CreatePassenger(pb.CreatePassengerRequest(passenger=draft)))

    for _ in range(2):  # the second failure updates the first's row (an upsert)
        wrong = running.fail(running.stub.SignIn(pb.SignInRequest(email="ada@example.com", password="x" * 8)))
        assert wrong.info.reason == "INVALID_CREDENTIALS"
    session = running.call(
        running.stub.SignIn(pb.SignInRequest(email="ADA@example.COM", password="correct horse"))
    )
    assert session.passenger == created
    renewed = running.call(
        running.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=session.refresh_token))
    )
    assert renewed.refresh_token != session.refresh_token
    reused = running.fail(
        running.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=session.refresh_token))
    )
    assert reused.info.reason == "REFRESH_TOKEN_INVALID"


def test_a_service_whose_database_is_unreachable_does_not_serve_and_says_which(tmp_path, runner):
    port = free_port()
    dsn = f"postgresql://postgres@127.0.0.1:{port}/passengers"
    config = load_config(postgres_mesh(tmp_path, dsn), env={})
    storage = dataclasses.replace(config.service("passengers").storage, connect_timeout=1.0)
    config = dataclasses.replace(
        config, services={"passengers": dataclasses.replace(config.service("passengers"), storage=storage)}
    )

    server = runner.run(create_server(config, "passengers", port=0))
    with pytest.raises(Unavailable) as caught:
        runner.run(server.start())
    runner.run(server.stop(0))
    assert caught.value.metadata == {"database": f"127.0.0.1:{port}/passengers"}

    assert runner.run(_serve(config, "passengers", port=0)) == 4  # the supervisor's cue to try again later
