"""The embedded store: one SQLite file per service, and the kit's backend on top of it.

Each service owns one database file (WAL mode, `var/<service>/<service>.db`);
nothing else opens it. `Database` is the file itself, synchronous: opening,
WAL, migrations (migrations.py, under `BEGIN IMMEDIATE`), transactions (the gateway's key
store uses it as it is). `SqliteBackend` is the same file behind the resource
kit's async `Backend` seam (resources.py), which is what services use.

Its calls run on the event loop's thread: they are short, indexed transactions
(tens of microseconds on this machine), cheaper than a hop to a thread pool;
see docs/architecture.md. One lock per connection keeps transactions and reads
from interleaving should a transaction ever await something real.

What is SQLite's own (postgres.py has the other engine): the DDL
(`migrations/*.sql`, with `.postgres.sql` variants where the engines differ),
how a unique violation is reported (`UNIQUE constraint failed: table.column`
here, the constraint named `<table>_<column>_key` there), `?` placeholders
(psycopg wants `%s`), and locking: one writer at a time here, so a read
inside a transaction needs no row lock, a transaction no advisory lock, and
a claim no `SKIP LOCKED`; nothing outlives a transaction across processes
(`Backend.lock` is None), and there is no LISTEN (`Backend.listen` is None):
replicas sharing the file poll it. `backend()` builds whichever engine
a service's `[storage]` chooses.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from .config import MeshConfig, ServiceConfig
from .migrations import Migration, Source, load, migrate, pending
from .resources import Backend, Row

WAL_WAIT = 10.0
"""How long opening a database waits for another process switching it to WAL."""


class Database:
    """A service's own SQLite database with versioned migrations."""

    def __init__(self, path: Path | str, migrations: Source, *, apply: bool = True) -> None:
        """`migrations`: a directory of numbered files, or scripts numbered 1, 2, ... (migrations.py);
        applied now unless not `apply` (a check: `pending()`)."""
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5.0)
        self._conn.row_factory = sqlite3.Row
        self._wal()
        # NORMAL in WAL mode survives a crash of the process (what a restart tests);
        # only a power loss can drop the last transactions.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self.migrations = load(migrations, "sqlite")
        try:
            self.applied = migrate(self, self.migrations) if apply else []
            """The migrations this opening applied."""
        except BaseException:
            self._conn.close()
            raise

    def _wal(self) -> None:
        """Switch the file to WAL, waiting for another process doing the same.

        Replicas open a fresh file at the same moment. The switch needs the file to
        itself, and SQLite answers "database is locked" at once, without its busy
        timeout, when it cannot have it (seen in CI and in tests), so it is tried
        again for up to `WAL_WAIT` seconds.
        """
        deadline = time.monotonic() + WAL_WAIT
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    self._conn.close()
                    raise
                time.sleep(0.02)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: all or nothing."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """A read outside any transaction."""
        return self._conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def pending(self) -> list[Migration]:
        """The migrations not applied yet, writing nothing."""
        return pending(self, self.migrations)

    def script(self, sql: str) -> None:
        for statement in _statements(sql):
            self._conn.execute(statement)

    def legacy_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn

    def close(self) -> None:
        self._conn.close()


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements; a `;` inside a string or trigger body does not split."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip() != ";":
                yield pending.strip()
            pending = ""
    if pending.rstrip(";").strip():
        yield pending.rstrip(";").strip()


class SqliteBackend(Backend):
    """A service's SQLite file as the kit's backend: async calls that run at once on the loop's thread."""

    def __init__(self, path: Path | str, migrations: Source) -> None:
        self.file = Database(path, migrations)
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None
        self._tx = _SqliteTx(self.file)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTx]:
        self._not_inside()
        async with self._lock:
            self._holder = asyncio.current_task()
            try:
                with self.file.transaction():
                    yield self._tx
            finally:
                self._holder = None

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._not_inside()
        async with self._lock:
            return list(self.file.query(sql, params))

    async def query_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        self._not_inside()
        async with self._lock:
            return self.file.query_one(sql, params)

    def _not_inside(self) -> None:
        """Fail loudly, rather than wait for ever on our own lock, if a transaction's body uses the db."""
        if self._holder is not None and self._holder is asyncio.current_task():
            raise RuntimeError("inside a transaction, read and write through its Tx, not the backend")

    def unique_violation(self, error: BaseException) -> str | None:
        prefix = "UNIQUE constraint failed: "
        if not isinstance(error, sqlite3.IntegrityError) or not str(error).startswith(prefix):
            return None
        columns = str(error).removeprefix(prefix).split(", ")
        return columns[0].rpartition(".")[2] if len(columns) == 1 else None

    async def close(self) -> None:
        self.file.close()


class _SqliteTx:
    """The open transaction of a `SqliteBackend` (its lock is held)."""

    def __init__(self, file: Database) -> None:
        self._conn = file.connection

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self._conn.execute(sql, params).fetchall())

    async def query_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
        return row

    async def lock(self, key: str) -> None:
        return None  # `BEGIN IMMEDIATE` already holds the whole database until the transaction ends

    async def notify(self, channel: str, payload: str) -> None:
        return None  # no listeners: replicas sharing the file poll it


def sqlite_path(config: MeshConfig, service: ServiceConfig) -> Path:
    """A service's SQLite file: `<data_dir>/<name>/<name>.db`."""
    return config.data_dir / service.name / f"{service.name}.db"


def backend(config: MeshConfig, service: ServiceConfig, migrations: Source) -> Backend:
    """The service's database as `[storage]` (or `[services.<name>.storage]`) chooses it; a PostgreSQL
    one still has to be opened (`await backend.open()`: connected, migrated)."""
    chosen = service.storage
    if chosen.backend == "sqlite":
        return SqliteBackend(sqlite_path(config, service), migrations)
    from .postgres import PostgresBackend  # psycopg is imported only by services that use it

    return PostgresBackend(
        chosen.dsn_for(service.name),
        migrations,
        pool_min=chosen.pool_min,
        pool_max=chosen.pool_max,
        statement_timeout=chosen.statement_timeout,
        connect_timeout=chosen.connect_timeout,
    )
