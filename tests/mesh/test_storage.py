"""Storage under the kit: migrations, atomic transactions, AIP-155 replays, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path

import psycopg
import psycopg_pool
import pytest
from rideshare.passengers.v1 import passengers_pb2 as pb

from services.runtime import migrations, storage
from services.runtime.errors import InvalidArgument, Unavailable
from services.runtime.migrations import Migration, MigrationError
from services.runtime.postgres import PostgresBackend, pyformat
from services.runtime.resources import Tx, fingerprint
from services.runtime.storage import _FLOCK, Database, FileLocks, SqliteBackend, lock_offset
from tests import postgres
from tests.ports import free_port
from tests.postgres import Backends, write_migrations

THINGS = """
CREATE TABLE things (
    id    {id},
    label TEXT NOT NULL
)
"""
FILES = {
    "0001_things.sql": THINGS.format(id="INTEGER PRIMARY KEY AUTOINCREMENT"),
    "0001_things.postgres.sql": THINGS.format(id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
    "0002_colour.sql": "ALTER TABLE things ADD COLUMN colour TEXT NOT NULL DEFAULT 'red';\n"
    "CREATE INDEX things_label ON things (label)",
}


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    return write_migrations(tmp_path / "migrations", FILES)


@pytest.fixture
def backend(backends: Backends, migrations_dir: Path):
    return backends.open(migrations_dir)


def applied(backends: Backends, backend) -> list[tuple[int, str]]:
    rows = backends.runner.run(backend.query("SELECT version, name FROM schema_migrations ORDER BY version"))
    return [(row["version"], row["name"]) for row in rows]


# -- migrations ----------------------------------------------------------------------------------------


def test_migrations_run_in_order_and_are_recorded_with_their_names(backends, backend):
    # version 0 is the runtime's own (the request log), then the service's files
    assert applied(backends, backend) == [(0, "runtime"), (1, "things"), (2, "colour")]

    async def insert() -> dict:
        async with backend.transaction() as tx:
            await tx.execute("INSERT INTO things (label) VALUES ('a')")
        return dict(await backend.query_one("SELECT label, colour FROM things"))

    assert backends.runner.run(insert()) == {"label": "a", "colour": "red"}


def test_reopening_applies_nothing_again(backends, migrations_dir):
    first = backends.open(migrations_dir)
    backends.runner.run(first.query("INSERT INTO things (label) VALUES ('kept')"))

    # ALTER TABLE ADD COLUMN would fail if it ran twice
    second = backends.open(migrations_dir)
    assert [r["label"] for r in backends.runner.run(second.query("SELECT label FROM things"))] == ["kept"]
    assert len(applied(backends, second)) == 3


def test_a_new_migration_runs_on_an_existing_database(backends, tmp_path):
    old = write_migrations(tmp_path / "old", {k: v for k, v in FILES.items() if k.startswith("0001")})
    backends.open(old)

    upgraded = backends.open(write_migrations(tmp_path / "new", FILES))
    assert [version for version, _ in applied(backends, upgraded)] == [0, 1, 2]
    row = backends.runner.run(upgraded.query_one("SELECT colour FROM things WHERE 1 = 0"))
    assert row is None  # the column exists (a missing one would fail the query)


def test_a_failing_migration_leaves_the_schema_as_it_was(backends, migrations_dir):
    backends.open(migrations_dir)
    # DDL first, then the failure: the created table must go with it (transactional DDL)
    (migrations_dir / "0003_broken.sql").write_text(
        "CREATE TABLE extra (x INTEGER); INSERT INTO nowhere VALUES (1)", encoding="utf-8"
    )

    with pytest.raises((sqlite3.OperationalError, psycopg.errors.UndefinedTable)):
        backends.open(migrations_dir)

    (migrations_dir / "0003_broken.sql").unlink()
    reopened = backends.open(migrations_dir)
    assert [version for version, _ in applied(backends, reopened)] == [0, 1, 2]
    with pytest.raises((sqlite3.OperationalError, psycopg.errors.UndefinedTable)):
        backends.runner.run(reopened.query("SELECT * FROM extra"))


def test_a_check_lists_what_is_pending_and_writes_nothing(backends, migrations_dir, tmp_path):
    if backends.engine == "sqlite":
        checked = Database(tmp_path / "fresh.db", migrations_dir, apply=False).pending()
        opened = Database(tmp_path / "fresh.db", [], apply=False)
        assert opened.query("SELECT name FROM sqlite_master") == []
        opened.close()
    else:
        fresh = PostgresBackend(backends.dsn("fresh"), migrations_dir)
        checked = backends.runner.run(fresh.pending())
        backends.runner.run(fresh.close())
        with psycopg.connect(backends.dsn("fresh")) as conn:
            assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
    assert [m.label for m in checked] == ["0000_runtime", "0001_things", "0002_colour"]


def test_a_file_versioned_by_user_version_is_adopted_not_migrated_again(tmp_path, migrations_dir):
    # What the runtime wrote before schema_migrations: the request log as version 1, then the
    # service's scripts, and PRAGMA user_version = how many.
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        (migrations.RUNTIME_MIGRATIONS / "0000_runtime.sql").read_text()
        + ";"
        + FILES["0001_things.sql"]
        + "; INSERT INTO things (label) VALUES ('old'); PRAGMA user_version = 2;"
    )
    conn.close()

    adopted = Database(path, migrations_dir)
    try:
        rows = adopted.query("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["name"]) for r in rows] == [
            (0, "adopted from user_version"),
            (1, "adopted from user_version"),
            (2, "colour"),
        ]
        assert [dict(r) for r in adopted.query("SELECT label, colour FROM things")] == [
            {"label": "old", "colour": "red"}
        ]
    finally:
        adopted.close()


def test_scripts_given_as_a_list_are_numbered_from_one(tmp_path):
    db = Database(tmp_path / "t.db", ["CREATE TABLE a (x INTEGER)", "CREATE TABLE b (y INTEGER)"])
    try:
        assert [r["version"] for r in db.query("SELECT version FROM schema_migrations")] == [0, 1, 2]
    finally:
        db.close()


def test_a_directory_gives_each_engine_its_own_text_and_includes_files(tmp_path):
    write_migrations(tmp_path / "shared", {"part.sql": "CREATE TABLE part (x INTEGER)"})
    directory = write_migrations(
        tmp_path / "svc",
        {
            "0001_init.sql": "CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT)",
            "0001_init.postgres.sql": "CREATE TABLE t (seq BIGINT GENERATED ALWAYS AS IDENTITY)",
            "0002_more.sql": "SELECT 1;\n\\ir ../shared/part.sql\n",
            "README.md": "not a migration",
        },
    )
    assert migrations.read(directory, "sqlite") == [
        Migration(1, "init", "CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT)"),
        Migration(2, "more", "SELECT 1;\nCREATE TABLE part (x INTEGER)\n"),
    ]
    assert migrations.read(directory, "postgres")[0].sql.endswith("GENERATED ALWAYS AS IDENTITY)")
    assert [m.version for m in migrations.load(directory, "postgres")] == [0, 1, 2]


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"0001_a.sql": "", "0003_c.sql": ""}, "version 0002 is missing"),
        ({"0001_a.sql": "", "0001_b.postgres.sql": ""}, "several names"),
        ({"0001_a.postgres.sql": ""}, "no text for sqlite"),
    ],
)
def test_a_directory_that_is_not_one_sequence_is_refused(tmp_path, files, problem):
    with pytest.raises(MigrationError, match=problem):
        migrations.read(write_migrations(tmp_path / "m", files), "sqlite")


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


@pytest.mark.parametrize("backends", ["postgres"], indirect=True)
def test_replicas_migrating_one_postgres_database_together_apply_each_migration_once(
    backends, migrations_dir
):
    dsn = backends.dsn("together")
    start = threading.Barrier(4)
    outcomes: list[object] = []

    def replica() -> None:
        backend = PostgresBackend(dsn, migrations_dir)
        start.wait()
        try:
            outcomes.append(backend.run_migrations())
        except Exception as error:
            outcomes.append(error)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    assert sorted(m.version for done in outcomes for m in done) == [0, 1, 2]  # each applied by one
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (3,)


# -- the SQLite file -----------------------------------------------------------------------------------


def test_database_file_is_created_with_its_directory_in_wal_mode(tmp_path):
    path = tmp_path / "svc" / "svc.db"
    db = Database(path, [])
    try:
        assert path.exists()
        assert db.query_one("PRAGMA journal_mode")[0] == "wal"
        assert db.query_one("PRAGMA foreign_keys")[0] == 1
    finally:
        db.close()


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


def test_using_the_sqlite_backend_inside_its_own_transaction_fails_instead_of_waiting_for_ever(tmp_path):
    backend = SqliteBackend(tmp_path / "t.db", [])

    async def misuse() -> None:
        async with backend.transaction():
            await backend.query("SELECT * FROM request_log")

    with pytest.raises(RuntimeError, match="through its Tx"):
        asyncio.run(misuse())
    asyncio.run(backend.close())


def _rows_in_the_database_file(path: Path) -> int:
    """Rows of `t` in the database file itself, leaving out what is only in its WAL (`immutable`:
    SQLite reads the file as it is, with no WAL and no locks)."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        conn.close()


async def _commit(backend: SqliteBackend, count: int) -> None:
    for number in range(count):
        async with backend.transaction() as tx:
            await tx.execute("INSERT INTO t (v) VALUES (?)", (f"row {number}",))


def test_the_wal_is_copied_into_the_database_by_a_worker_every_so_many_commits(tmp_path, monkeypatch):
    """The serving connection never checkpoints (a checkpoint fsyncs with the event loop
    stalled); after CHECKPOINT_EVERY commits one runs off the loop, and the rows reach the file."""
    monkeypatch.setattr(storage, "CHECKPOINT_EVERY", 5)
    path = tmp_path / "t.db"
    backend = SqliteBackend(path, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
    loop_thread = threading.get_ident()
    ran_in: list[int] = []
    checkpoint = storage._Checkpoints._checkpoint

    def watched(self: storage._Checkpoints) -> None:
        ran_in.append(threading.get_ident())
        checkpoint(self)

    monkeypatch.setattr(storage._Checkpoints, "_checkpoint", watched)

    async def scenario() -> None:
        assert backend.file.query_one("PRAGMA wal_autocheckpoint")[0] == 0
        await _commit(backend, 4)
        assert ran_in == []
        await _commit(backend, 1)
        await backend.close()  # waits for the checkpoint that the fifth commit started

    asyncio.run(scenario())
    assert len(ran_in) == 1
    assert ran_in[0] != loop_thread  # a worker, not the event loop's thread
    assert _rows_in_the_database_file(path) == 5


def test_the_serving_connection_does_not_checkpoint_on_its_own(tmp_path, monkeypatch):
    """Past SQLite's own 1,000-page mark the rows are still only in the WAL until a checkpoint is due."""
    monkeypatch.setattr(storage, "CHECKPOINT_EVERY", 10**9)
    path = tmp_path / "t.db"
    backend = SqliteBackend(path, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])

    backend.file.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the table, in the file

    async def scenario() -> None:
        async with backend.transaction() as tx:
            for number in range(3000):  # ~1,500 pages in one commit
                await tx.execute("INSERT INTO t (v) VALUES (?)", ("x" * 2000 + str(number),))
        await _commit(backend, 1)
        assert _rows_in_the_database_file(path) == 0

    asyncio.run(scenario())
    asyncio.run(backend.close())


def held_elsewhere(locks: FileLocks, key: str) -> bool:
    """Whether a descriptor other than one of ours holds `key`'s byte, asked of the kernel on a
    descriptor of our own (F_OFD_GETLK answers with a conflicting lock, or F_UNLCK)."""
    fd = os.open(locks.path, os.O_RDWR)
    try:
        query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, locks.offset(key), 1, 0)
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query)
        return bool(_FLOCK.unpack(answer)[0] != fcntl.F_UNLCK)
    finally:
        os.close(fd)


def test_two_keys_on_one_byte_take_turns_and_never_let_go_of_each_other(tmp_path, runner):
    """Within a process the kernel would let both take the byte and drop it at the first unlock;
    the second waits instead, and a block nested in one holding the byte shares it."""
    locks = FileLocks(tmp_path / "db-locks", offset=lambda key: 7)
    order: list[str] = []

    async def step(key: str, entered: asyncio.Event, leave: asyncio.Event) -> None:
        async with locks.hold(key):
            order.append(f"{key}+")
            entered.set()
            await leave.wait()
            order.append(f"{key}-")

    async def main() -> None:
        events = {key: (asyncio.Event(), asyncio.Event()) for key in "xy"}
        first = asyncio.create_task(step("x", *events["x"]))
        await events["x"][0].wait()
        second = asyncio.create_task(step("y", *events["y"]))
        for _ in range(3):
            await asyncio.sleep(0)
        assert not events["y"][0].is_set(), "y shares x's byte: it waits for x"
        events["x"][1].set()
        async with asyncio.timeout(5):
            await events["y"][0].wait()
        assert held_elsewhere(locks, "y"), "x letting go did not drop the byte y now holds"
        events["y"][1].set()
        await asyncio.gather(first, second)
        assert not held_elsewhere(locks, "x")

        async with locks.hold("x"):
            async with locks.hold("y"):  # nested: already ours, shared
                pass
            assert held_elsewhere(locks, "x"), "the nested block let go of the outer one's byte"
        assert not held_elsewhere(locks, "x")

    runner.run(main())
    assert order == ["x+", "x-", "y+", "y-"]
    locks.close()


def test_a_wait_cancelled_leaves_nothing_held(tmp_path, runner):
    """Two backends of one process are two descriptors: they exclude each other as two processes do."""
    holder, waiter = FileLocks(tmp_path / "db-locks"), FileLocks(tmp_path / "db-locks")

    async def main() -> None:
        async with holder.hold("t1"):
            waiting = asyncio.create_task(waiter.hold("t1").__aenter__())
            for _ in range(3):
                await asyncio.sleep(0)
            assert not waiting.done(), "another descriptor holds t1"
            waiting.cancel()
            await asyncio.wait({waiting})
            assert waiting.cancelled()
        assert not held_elsewhere(holder, "t1"), "the cancelled wait took the byte after all"
        async with asyncio.timeout(5), waiter.hold("t1"):
            assert held_elsewhere(holder, "t1")

    runner.run(main())
    holder.close()
    waiter.close()


def test_a_database_in_memory_still_has_its_locks(runner):
    backend = SqliteBackend(":memory:", [])

    async def main() -> None:
        async with backend.lock("t1"):
            pass

    runner.run(main())
    runner.run(backend.close())


def test_a_key_is_a_byte_of_62_bits(tmp_path):
    assert lock_offset("trips/t1") == lock_offset("trips/t1") != lock_offset("trips/t2")
    assert all(0 <= lock_offset(f"k{n}") < 2**62 for n in range(100))


# -- transactions and replays, on both engines ---------------------------------------------------------


def create_request(request_id: str = "", email: str = "ada@example.com") -> pb.CreatePassengerRequest:
    return pb.CreatePassengerRequest(
        passenger=pb.Passenger(display_name="Ada", email=email), request_id=request_id
    )


class Writer:
    """A write that inserts a row and answers with a passenger numbered by the row."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.calls = 0
        self.gate = gate

    async def __call__(self, tx: Tx) -> pb.Passenger:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        rows = await tx.query("INSERT INTO things (label) VALUES ('w') RETURNING id")
        return pb.Passenger(name=f"passengers/{rows[0]['id']}")


def idempotent(backends: Backends, backend, method: str, request, write) -> pb.Passenger:
    return backends.runner.run(backend.idempotent(method, request, pb.Passenger, write))


def things(backends: Backends, backend) -> list:
    return backends.runner.run(backend.query("SELECT * FROM things"))


def test_a_failed_transaction_writes_nothing(backends, backend):
    async def half_done() -> None:
        async with backend.transaction() as tx:
            await tx.execute("INSERT INTO things (label) VALUES ('half')")
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError):
        backends.runner.run(half_done())
    assert things(backends, backend) == []


def test_idempotent_replays_the_first_answer_without_writing_again(backends, backend):
    write = Writer()

    first = idempotent(backends, backend, "Create", create_request("r-1"), write)
    again = idempotent(backends, backend, "Create", create_request("r-1"), write)

    assert first == again == pb.Passenger(name="passengers/1")
    assert write.calls == 1
    assert len(things(backends, backend)) == 1


def test_idempotent_answer_survives_reopening_the_database(backends, migrations_dir):
    first_db = backends.open(migrations_dir)
    first = idempotent(backends, first_db, "Create", create_request("r-1"), Writer())
    backends.runner.run(first_db.close())

    reopened = backends.open(migrations_dir)
    write = Writer()
    assert idempotent(backends, reopened, "Create", create_request("r-1"), write) == first
    assert write.calls == 0


def test_same_request_id_with_a_different_payload_is_refused(backends, backend):
    idempotent(backends, backend, "Create", create_request("r-1"), Writer())

    with pytest.raises(InvalidArgument) as caught:
        idempotent(backends, backend, "Create", create_request("r-1", email="eve@example.com"), Writer())

    assert caught.value.reason == "REQUEST_ID_REUSED"
    assert [v.field for v in caught.value.violations] == ["request_id"]
    assert len(things(backends, backend)) == 1


def test_request_ids_are_scoped_to_the_method(backends, backend):
    idempotent(backends, backend, "Create", create_request("r-1"), Writer())
    other = idempotent(backends, backend, "Update", create_request("r-1"), Writer())

    assert other == pb.Passenger(name="passengers/2")


def test_without_request_id_every_call_writes(backends, backend):
    write = Writer()

    answers = [idempotent(backends, backend, "Create", create_request(), write) for _ in range(2)]

    assert [a.name for a in answers] == ["passengers/1", "passengers/2"]
    assert backends.runner.run(backend.query("SELECT * FROM request_log")) == []


def test_a_failed_write_is_not_remembered_so_a_retry_can_succeed(backends, backend):
    async def fail(tx: Tx) -> pb.Passenger:
        await tx.execute("INSERT INTO things (label) VALUES ('lost')")
        raise InvalidArgument.field("passenger.email", "taken")

    with pytest.raises(InvalidArgument):
        idempotent(backends, backend, "Create", create_request("r-1"), fail)

    assert things(backends, backend) == []
    assert idempotent(backends, backend, "Create", create_request("r-1"), Writer()).name.startswith(
        "passengers/"
    )


def test_replay_finds_the_stored_answer_without_writing(backends, backend):
    async def scenario() -> None:
        first = pb.CreatePassengerRequest(passenger=pb.Passenger(display_name="A"), request_id="k")
        assert await backend.replay("CreatePassenger", first, pb.Passenger) is None

        async def write(tx: Tx) -> pb.Passenger:
            return pb.Passenger(name="passengers/1")

        await backend.idempotent("CreatePassenger", first, pb.Passenger, write)

        assert (await backend.replay("CreatePassenger", first, pb.Passenger)).name == "passengers/1"
        assert await backend.replay("CreatePassenger", pb.CreatePassengerRequest(), pb.Passenger) is None
        other = pb.CreatePassengerRequest(passenger=pb.Passenger(display_name="B"), request_id="k")
        with pytest.raises(InvalidArgument) as caught:
            await backend.replay("CreatePassenger", other, pb.Passenger)
        assert caught.value.reason == "REQUEST_ID_REUSED"

    backends.runner.run(scenario())


def test_the_fingerprint_ignores_only_the_request_id():
    assert fingerprint(pb.DeletePassengerRequest(name="passengers/a", request_id="x")) == fingerprint(
        pb.DeletePassengerRequest(name="passengers/a", request_id="y")
    )
    assert fingerprint(pb.DeletePassengerRequest(name="passengers/a")) != fingerprint(
        pb.DeletePassengerRequest(name="passengers/b")
    )


def test_a_unique_violation_names_its_column(backends, backend):
    async def twice() -> None:
        for _ in range(2):
            async with backend.transaction() as tx:
                await tx.execute("INSERT INTO request_log VALUES ('M', 'k', '', ?, 0)", (b"",))

    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)) as caught:
        backends.runner.run(twice())

    # SQLite names both columns of the key (the last one counts); PostgreSQL the key's name
    assert backend.unique_violation(caught.value) == "request_id"
    assert backend.unique_violation(RuntimeError("UNIQUE constraint failed: things.id")) is None


@pytest.mark.parametrize("backends", ["postgres"], indirect=True)
def test_the_same_request_id_racing_on_two_connections_is_one_write_and_one_replay(backends, migrations_dir):
    one, two = backends.open(migrations_dir, "race"), backends.open(migrations_dir, "race")

    async def scenario() -> tuple[pb.Passenger, pb.Passenger]:
        gate = asyncio.Event()
        # The first has looked in the request log and found nothing; the second then writes and
        # commits; the first's own log entry collides, its write rolls back, the second's answer stands.
        slow = asyncio.create_task(one.idempotent("Create", create_request("r"), pb.Passenger, Writer(gate)))
        await asyncio.sleep(0)
        while not gate.is_set() and not slow.done():
            fast = await two.idempotent("Create", create_request("r"), pb.Passenger, Writer())
            gate.set()
        return await slow, fast

    slow, fast = backends.runner.run(scenario())
    assert slow == fast
    assert len(things(backends, one)) == 1


# -- PostgreSQL's own ----------------------------------------------------------------------------------


def test_placeholders_are_rewritten_once_outside_string_literals():
    assert pyformat("SELECT * FROM t WHERE a = ? AND b LIKE '50%' AND c = 'it''s'") == (
        "SELECT * FROM t WHERE a = %s AND b LIKE '50%%' AND c = 'it''s'"
    )
    assert pyformat("SELECT ?") is pyformat("SELECT ?")  # cached
    with pytest.raises(ValueError, match="inside a string literal"):
        pyformat("SELECT * FROM t WHERE a = '?'")


TRICKY = "100% sure? '; DROP TABLE things; --"


@pytest.mark.parametrize("backends", ["postgres"], indirect=True)
def test_a_string_with_percent_signs_and_question_marks_travels_as_a_bound_parameter(backends, backend):
    async def scenario() -> str:
        async with backend.transaction() as tx:
            await tx.execute(
                "INSERT INTO things (label) VALUES (?)", ("100% sure? '; DROP TABLE things; --",)
            )
        row = await backend.query_one("SELECT label FROM things WHERE label LIKE '100%'")
        return str(row["label"])

    assert backends.runner.run(scenario()) == TRICKY


def test_an_unreachable_database_is_unavailable_naming_it(runner):
    port = free_port()
    backend = PostgresBackend(f"postgresql://postgres@127.0.0.1:{port}/trips", [], connect_timeout=1.0)

    with pytest.raises(Unavailable) as opening:
        runner.run(backend.open())
    assert opening.value.reason == "DATABASE_UNAVAILABLE"
    assert opening.value.metadata == {"database": f"127.0.0.1:{port}/trips"}
    assert f"database 127.0.0.1:{port}/trips is unavailable" in str(opening.value)
    runner.run(backend.close())


def test_the_pools_warning_per_failed_connection_attempt_is_a_debug_line(runner, caplog):
    port = free_port()
    backend = PostgresBackend(f"postgresql://postgres@127.0.0.1:{port}/trips", [], connect_timeout=1.0)
    caplog.set_level(logging.DEBUG, "psycopg.pool")

    with pytest.raises(psycopg_pool.PoolTimeout):  # its attempts were refused meanwhile
        runner.run(backend.pool.open(wait=True, timeout=1.0))
    runner.run(backend.close())

    attempts = [r for r in caplog.records if r.getMessage().startswith("error connecting in")]
    assert attempts, "psycopg_pool no longer says 'error connecting in': update postgres.CONNECTION_TROUBLE"
    assert {r.levelname for r in attempts} == {"DEBUG"}
    caplog.clear()
    caplog.set_level(logging.INFO, "psycopg.pool")
    logging.getLogger("psycopg.pool").warning("error connecting in %r: %s", "pool-1", "refused")
    logging.getLogger("psycopg.pool").warning("rolling back returned connection: %s", "<conn>")
    assert [r.getMessage() for r in caplog.records] == ["rolling back returned connection: <conn>"]


@pytest.mark.parametrize("backends", ["postgres"], indirect=True)
def test_a_database_that_goes_away_is_unavailable_and_the_pool_recovers(backends, backend):
    async def terminate_and_query() -> Exception | None:
        async with backend.pool.connection() as conn:
            pids = [
                row["pid"] for row in await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchall()
            ]
        with psycopg.connect(backends.dsn(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
        try:
            await backend.query("SELECT 1")
        except Unavailable as error:
            return error
        return None

    failed = backends.runner.run(terminate_and_query())
    assert failed is not None
    assert failed.reason == "DATABASE_UNAVAILABLE"
    # the broken connection left the pool; the next call gets a working one
    assert things(backends, backend) == []


@pytest.mark.parametrize("backends", ["postgres"], indirect=True)
def test_a_terminated_connection_is_no_outage_to_ping_but_a_database_refusing_connections_is(
    backends, backend
):
    run = backends.runner.run
    run(backend.ping())  # opens its own connection

    assert postgres.terminate(backends.dsn()) >= 2  # the pool's and the ping's
    run(backend.ping())  # a new connection answers: the database is there
    with postgres.out_of_reach(backends.dsn()), pytest.raises(Unavailable) as caught:
        run(backend.ping())
    assert caught.value.reason == "DATABASE_UNAVAILABLE"
    assert "not currently accepting connections" in caught.value.message
    run(backend.ping())


@pytest.mark.parametrize("backends", ["postgres"], indirect=True)
def test_once_an_outage_outlasted_the_pools_retries_the_first_call_after_it_gets_a_connection(
    backends, migrations_dir, loop
):
    # psycopg_pool's default retries a lost connection with doubling pauses for 5 minutes: a call
    # after a long outage waited for the next try (up to as long again as the outage). Retries end
    # after connect_timeout now, and the next call that waits starts one at once.
    backend = PostgresBackend(backends.dsn(), migrations_dir, connect_timeout=1.0)
    loop.call(backend.open())
    try:
        with postgres.out_of_reach(backends.dsn()):
            with pytest.raises(Unavailable):
                loop.call(backend.query("SELECT 1"))
            loop.settled(lambda: backend.pool.get_stats()["pool_size"] == 0, "the pool to stop retrying")
        assert loop.call(backend.query("SELECT 1 AS one")) == [{"one": 1}]
    finally:
        loop.call(backend.close())


@pytest.mark.parametrize("backends", ["postgres"], indirect=True)
def test_listen_hears_what_commits_and_says_when_it_connected_again(backends, backend, caplog):
    channel = "things"

    async def notify(payload: str, commit: bool = True) -> None:
        with contextlib.suppress(RuntimeError):
            async with backend.transaction() as tx:
                await tx.notify(channel, payload)
                if not commit:
                    raise RuntimeError("rolled back")

    async def scenario() -> list[str | None]:
        heard: list[str | None] = []
        changes = backend.listen(channel)
        async with asyncio.timeout(10), contextlib.aclosing(changes):
            heard.append(await anext(changes))  # listening now
            await notify("1")
            await notify("lost", commit=False)
            await notify("2")
            heard += [await anext(changes), await anext(changes)]
            with psycopg.connect(backends.dsn(), autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s",
                    (f'LISTEN "{channel}"',),
                )
            heard.append(await anext(changes))  # connected again: whatever was sent meanwhile is missed
            await notify("3")
            heard.append(await anext(changes))
        return heard

    assert backends.runner.run(scenario()) == [None, "1", "2", None, "3"]
    assert [getattr(r, "fields", {}).get("event") for r in caplog.records] == ["listen_lost"]
