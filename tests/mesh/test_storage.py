"""The embedded store: versioned migrations, atomic transactions, AIP-155 replays over the async backend."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rideshare.passengers.v1 import passengers_pb2 as pb

from services.runtime.errors import InvalidArgument
from services.runtime.resources import Tx, fingerprint
from services.runtime.storage import Database, SqliteBackend

MIGRATIONS = [
    "CREATE TABLE things (id INTEGER PRIMARY KEY, label TEXT NOT NULL)",
    "ALTER TABLE things ADD COLUMN colour TEXT NOT NULL DEFAULT 'red';"
    "CREATE INDEX things_label ON things (label)",
]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "svc" / "svc.db"


@pytest.fixture
def db(path: Path) -> Iterator[Database]:
    database = Database(path, MIGRATIONS)
    yield database
    database.close()


def test_database_file_is_created_with_its_directory_in_wal_mode(db, path):
    assert path.exists()
    assert db.query_one("PRAGMA journal_mode")[0] == "wal"
    assert db.query_one("PRAGMA foreign_keys")[0] == 1


def test_migrations_run_in_order_and_record_the_version(db):
    # request_log is migration 1, then the service's own
    assert db.query_one("PRAGMA user_version")[0] == 1 + len(MIGRATIONS)
    with db.transaction() as tx:
        tx.execute("INSERT INTO things (label) VALUES ('a')")
    assert dict(db.query_one("SELECT label, colour FROM things")) == {"label": "a", "colour": "red"}


def test_reopening_does_not_rerun_migrations(path):
    first = Database(path, MIGRATIONS)
    with first.transaction() as tx:
        tx.execute("INSERT INTO things (label) VALUES ('kept')")
    first.close()

    # ALTER TABLE ADD COLUMN would fail if it ran twice
    second = Database(path, MIGRATIONS)
    try:
        assert [r["label"] for r in second.query("SELECT label FROM things")] == ["kept"]
        assert second.query_one("PRAGMA user_version")[0] == 3
    finally:
        second.close()


def test_a_new_migration_runs_on_an_existing_database(path):
    Database(path, MIGRATIONS[:1]).close()

    upgraded = Database(path, MIGRATIONS)
    try:
        assert upgraded.query_one("PRAGMA user_version")[0] == 3
        assert "colour" in [r["name"] for r in upgraded.query("PRAGMA table_info(things)")]
    finally:
        upgraded.close()


def test_a_failing_migration_leaves_the_previous_version(path):
    broken = [*MIGRATIONS, "CREATE TABLE extra (x INTEGER); INSERT INTO nowhere VALUES (1)"]

    with pytest.raises(sqlite3.OperationalError):
        Database(path, broken)

    reopened = Database(path, MIGRATIONS)
    try:
        assert reopened.query_one("PRAGMA user_version")[0] == 3
        assert reopened.query_one("SELECT name FROM sqlite_master WHERE name = 'extra'") is None
    finally:
        reopened.close()


def test_a_failed_transaction_writes_nothing(db):
    def half_done() -> None:
        with db.transaction() as tx:
            tx.execute("INSERT INTO things (label) VALUES ('half')")
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError):
        half_done()

    assert db.query("SELECT * FROM things") == []
    with db.transaction() as tx:
        tx.execute("INSERT INTO things (label) VALUES ('next')")
    assert [r["label"] for r in db.query("SELECT label FROM things")] == ["next"]


def create_request(request_id: str = "", email: str = "ada@example.com") -> pb.CreatePassengerRequest:
    return pb.CreatePassengerRequest(
        passenger=pb.Passenger(display_name="Ada", email=email), request_id=request_id
    )


@pytest.fixture
def backend(path: Path) -> Iterator[SqliteBackend]:
    opened = SqliteBackend(path, MIGRATIONS)
    yield opened
    asyncio.run(opened.close())


class Writer:
    """A write that inserts a row and answers with a passenger numbered by the row."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, tx: Tx) -> pb.Passenger:
        self.calls += 1
        rows = await tx.query("INSERT INTO things (label) VALUES ('w') RETURNING id")
        return pb.Passenger(name=f"passengers/{rows[0]['id']}")


def idempotent(backend: SqliteBackend, method: str, request, write) -> pb.Passenger:
    return asyncio.run(backend.idempotent(method, request, pb.Passenger, write))


def things(backend: SqliteBackend) -> list:
    return asyncio.run(backend.query("SELECT * FROM things"))


def test_idempotent_replays_the_first_answer_without_writing_again(backend):
    write = Writer()

    first = idempotent(backend, "Create", create_request("r-1"), write)
    again = idempotent(backend, "Create", create_request("r-1"), write)

    assert first == again == pb.Passenger(name="passengers/1")
    assert write.calls == 1
    assert len(things(backend)) == 1


def test_idempotent_answer_survives_reopening_the_file(path):
    first_db = SqliteBackend(path, MIGRATIONS)
    first = idempotent(first_db, "Create", create_request("r-1"), Writer())
    asyncio.run(first_db.close())

    reopened = SqliteBackend(path, MIGRATIONS)
    try:
        write = Writer()
        again = idempotent(reopened, "Create", create_request("r-1"), write)
        assert again == first
        assert write.calls == 0
    finally:
        asyncio.run(reopened.close())


def test_same_request_id_with_a_different_payload_is_refused(backend):
    idempotent(backend, "Create", create_request("r-1"), Writer())

    with pytest.raises(InvalidArgument) as caught:
        idempotent(backend, "Create", create_request("r-1", email="eve@example.com"), Writer())

    assert caught.value.reason == "REQUEST_ID_REUSED"
    assert [v.field for v in caught.value.violations] == ["request_id"]
    assert len(things(backend)) == 1


def test_request_ids_are_scoped_to_the_method(backend):
    idempotent(backend, "Create", create_request("r-1"), Writer())
    other = idempotent(backend, "Update", create_request("r-1"), Writer())

    assert other == pb.Passenger(name="passengers/2")


def test_without_request_id_every_call_writes(backend):
    write = Writer()

    answers = [idempotent(backend, "Create", create_request(), write) for _ in range(2)]

    assert [a.name for a in answers] == ["passengers/1", "passengers/2"]
    assert asyncio.run(backend.query("SELECT * FROM request_log")) == []


def test_a_failed_write_is_not_remembered_so_a_retry_can_succeed(backend):
    async def fail(tx: Tx) -> pb.Passenger:
        await tx.execute("INSERT INTO things (label) VALUES ('lost')")
        raise InvalidArgument.field("passenger.email", "taken")

    with pytest.raises(InvalidArgument):
        idempotent(backend, "Create", create_request("r-1"), fail)

    assert things(backend) == []
    assert idempotent(backend, "Create", create_request("r-1"), Writer()).name == "passengers/1"


def test_a_migration_may_hold_semicolons_in_strings_and_trigger_bodies(tmp_path):
    db = Database(
        tmp_path / "t.db",
        [
            "CREATE TABLE a (x TEXT DEFAULT ';'); CREATE TABLE b (n INTEGER);"
            "CREATE TRIGGER count_a AFTER INSERT ON a BEGIN INSERT INTO b VALUES (1); END;"
        ],
    )
    with db.transaction() as tx:
        tx.execute("INSERT INTO a DEFAULT VALUES")
    assert db.query_one("SELECT x FROM a")["x"] == ";"
    assert db.query_one("SELECT count(*) AS n FROM b")["n"] == 1
    db.close()


def test_replay_finds_the_stored_answer_without_writing(tmp_path):
    async def scenario() -> None:
        db = SqliteBackend(tmp_path / "t.db", [])
        first = pb.CreatePassengerRequest(passenger=pb.Passenger(display_name="A"), request_id="k")
        assert await db.replay("CreatePassenger", first, pb.Passenger) is None

        async def write(tx: Tx) -> pb.Passenger:
            return pb.Passenger(name="passengers/1")

        await db.idempotent("CreatePassenger", first, pb.Passenger, write)

        assert (await db.replay("CreatePassenger", first, pb.Passenger)).name == "passengers/1"
        assert await db.replay("CreatePassenger", pb.CreatePassengerRequest(), pb.Passenger) is None
        other = pb.CreatePassengerRequest(passenger=pb.Passenger(display_name="B"), request_id="k")
        with pytest.raises(InvalidArgument) as caught:
            await db.replay("CreatePassenger", other, pb.Passenger)
        assert caught.value.reason == "REQUEST_ID_REUSED"
        await db.close()

    asyncio.run(scenario())


def test_the_fingerprint_ignores_only_the_request_id():
    assert fingerprint(pb.DeletePassengerRequest(name="passengers/a", request_id="x")) == fingerprint(
        pb.DeletePassengerRequest(name="passengers/a", request_id="y")
    )
    assert fingerprint(pb.DeletePassengerRequest(name="passengers/a")) != fingerprint(
        pb.DeletePassengerRequest(name="passengers/b")
    )


def test_a_unique_violation_names_its_column(backend):
    async def twice() -> None:
        for _ in range(2):
            async with backend.transaction() as tx:
                await tx.execute("INSERT INTO things (id, label) VALUES (1, 'x')")

    with pytest.raises(sqlite3.IntegrityError) as caught:
        asyncio.run(twice())

    assert backend.unique_violation(caught.value) == "id"
    assert backend.unique_violation(RuntimeError("UNIQUE constraint failed: things.id")) is None


def test_using_the_backend_inside_its_own_transaction_fails_instead_of_waiting_for_ever(backend):
    async def misuse() -> None:
        async with backend.transaction():
            await backend.query("SELECT * FROM things")

    with pytest.raises(RuntimeError, match="through its Tx"):
        asyncio.run(misuse())


def _open_at(path: str, start: float) -> str:
    """In a child process: open `path` at `start` (time.time()); "" or what went wrong."""
    while time.time() < start:
        pass
    try:
        Database(path, ["CREATE TABLE t (x INTEGER)"]).close()
    except Exception as exc:
        return repr(exc)
    return ""


def test_replicas_opening_a_fresh_file_at_the_same_moment_all_succeed(tmp_path):
    # Replicas are processes that open a new file together: the switch to WAL and the first
    # migration race. Before the retry, this failed with "database is locked" now and then.
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        for attempt in range(10):
            path = str(tmp_path / f"race-{attempt}.sqlite")
            start = time.time() + 0.3
            results = pool.starmap(_open_at, [(path, start)] * 4)
            assert results == [""] * 4
            db = Database(path, ["CREATE TABLE t (x INTEGER)"])
            assert db.query_one("PRAGMA journal_mode")[0] == "wal"
            db.close()
