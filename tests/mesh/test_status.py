"""`mesh status` shows where each service keeps its data and whether it can be reached from here."""

from __future__ import annotations

import json

from services.mesh.status import Member, format_table, status, status_json
from services.passengers.app import MIGRATIONS as PASSENGERS_MIGRATIONS
from services.runtime.config import load_config
from services.runtime.storage import Database, sqlite_path
from tests import postgres
from tests.conftest import write_mesh_file
from tests.ports import free_port

#: Nothing listens on port 1: every member is DOWN at once, and only its storage is asked.
ONE_SERVICE = 'host = "127.0.0.1"\ndata_dir = "data"\n\n[services.passengers]\nport = 1\n'


def load(tmp_path, storage: str = ""):
    return load_config(write_mesh_file(tmp_path, ONE_SERVICE + storage), env={})


def on_postgres(dsn: str) -> str:
    return f'\n[storage]\nbackend = "postgres"\ndsn = "{dsn}"\n'


def test_the_table_lists_each_services_storage_once_after_the_members():
    file = "/srv/mesh/var/passengers/passengers.db"
    refused = 'connection failed: connection to server at "10.0.0.7", port 5432 failed: Connection refused'
    members = [
        Member("passengers", "127.0.0.1:50051", 10, "SERVING", 0, storage=file, storage_health="reachable"),
        Member("passengers", "127.0.0.1:50061", 11, "SERVING", 1, storage=file, storage_health="reachable"),
        Member(
            "trips",
            "127.0.0.1:50053",
            12,
            "NOT_SERVING",
            storage="10.0.0.7:5432/trips",
            storage_health=refused,
        ),
        Member("gateway", "127.0.0.1:8080", 13, "SERVING"),
    ]

    assert format_table(members).splitlines() == [
        "SERVICE       ADDRESS          PID  HEALTH       RESTARTS  LAST EXIT",
        "passengers-0  127.0.0.1:50051  10   SERVING      0         -",
        "passengers-1  127.0.0.1:50061  11   SERVING      0         -",
        "trips         127.0.0.1:50053  12   NOT_SERVING  0         -",
        "gateway       127.0.0.1:8080   13   SERVING      0         -",
        "",
        "SERVICE     STORAGE                                 STORAGE HEALTH",
        f"passengers  {file}  reachable",
        f"trips       10.0.0.7:5432/trips                     {refused}",
    ]


def test_a_sqlite_service_shows_its_file_missing_until_it_is_made_then_reachable(tmp_path):
    config = load(tmp_path)
    path = sqlite_path(config, config.service("passengers"))

    [before] = status(config)
    Database(path, PASSENGERS_MIGRATIONS).close()
    [after] = status(config)

    assert before.storage == after.storage == str(path)
    assert before.storage_health == "no file yet (the service makes it when it starts)"
    assert after.storage_health == "reachable"
    assert before.health == after.health == "DOWN"


def test_a_postgres_database_is_named_without_its_password_and_a_refusal_says_why(tmp_path):
    port = free_port()
    config = load(tmp_path, on_postgres(f"postgresql://app:s3cret@127.0.0.1:{port}/{{service}}"))

    members = status(config)

    [member] = members
    assert member.storage == f"127.0.0.1:{port}/passengers"
    assert "Connection refused" in member.storage_health
    for shown in (format_table(members), status_json(members)):
        assert "s3cret" not in shown
    assert json.loads(status_json(members))[0]["storage"] == f"127.0.0.1:{port}/passengers"


def test_a_postgres_database_is_reachable_and_one_refusing_connections_says_so(tmp_path, postgres_databases):
    dsn = postgres_databases.create("status")
    config = load(tmp_path, on_postgres(dsn))

    [up] = status(config)
    with postgres.out_of_reach(dsn):
        [refusing] = status(config)

    assert up.storage == refusing.storage == f"127.0.0.1:5432/{postgres_databases.prefix}_status"
    assert up.storage_health == "reachable"
    assert "is not currently accepting connections" in refusing.storage_health
