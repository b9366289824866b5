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
a claim no `SKIP LOCKED`; there is no LISTEN (`Backend.listen` is None):
replicas sharing the file poll it. `backend()` builds whichever engine
a service's `[storage]` chooses.

A lock held across a block's transactions (`Backend.lock`, PostgreSQL's
session advisory lock there) needs no transaction here: `FileLocks` takes a
Linux open-file-description record lock (`fcntl` `F_OFD_SETLK`) on one byte
of a sidecar file next to the database (`<name>.db-locks`), at an offset
from a 62-bit hash of the key. The kernel lets go of a dead process's locks
at once. OFD locks rather than classic POSIX ones (`lockf`, `F_SETLK`):
those belong to the process, so two backends of one process on one file
(tests, tools) would not exclude each other, and closing any descriptor of
the file (another backend closing) would drop all of the process's locks on
it. OFD locks belong to the one descriptor this backend opens, and are
released only by an unlock or by closing it (a program the process starts
does not inherit it: Python opens it close-on-exec; a child forked without
exec would share it, locks and all). The sidecar, made at the first hold,
is not the database file, whose locks are SQLite's.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import fcntl
import hashlib
import os
import sqlite3
import struct
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from . import log
from .config import MeshConfig, ServiceConfig
from .migrations import Migration, Source, load, migrate, pending
from .resources import Backend, Row

_log = log.get_logger("rideshare.storage")

WAL_WAIT = 10.0
"""How long opening a database waits for another process switching it to WAL."""
LOCK_POLL = (0.005, 0.2)
"""A wait for a lock another process holds: the first pause between tries, doubling up to the last."""


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


CHECKPOINT_EVERY = 250
"""Commits between two checkpoints of a backend's WAL (~1,000 pages, SQLite's own interval, at the
trip path's ~4 pages a commit)."""


class SqliteBackend(Backend):
    """A service's SQLite file as the kit's backend: async calls that run at once on the loop's thread.

    All but one: copying the WAL back into the database file (a checkpoint), which
    SQLite does in the commit that fills the WAL to 1,000 pages, fsyncing both
    files: ~5 ms with the event loop stalled, once every few hundred commits (on
    this machine a commit's p50 is 12 us, its p99.9 5 ms: docs/benchmarks.md §5d).
    The serving connection never checkpoints (`wal_autocheckpoint=0`); every
    `CHECKPOINT_EVERY` commits a passive checkpoint runs on a connection of its own
    in a worker thread (sqlite3 lets go of the GIL while SQLite works), which never
    blocks a writer, and one still running is not doubled.
    """

    def __init__(self, path: Path | str, migrations: Source) -> None:
        self.file = Database(path, migrations)
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None
        self._tx = _SqliteTx(self.file)
        self.locks = FileLocks(None if str(path) == ":memory:" else Path(f"{path}-locks"))
        self._checkpoints = _Checkpoints(self.file) if str(path) != ":memory:" else None

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        return self.locks.hold(key)

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
        if self._checkpoints is not None:
            self._checkpoints.committed()

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
        # A key of several columns is named for its last, as on PostgreSQL (the request log's
        # (method, request_id) is `request_log_request_id_key` there).
        return str(error).removeprefix(prefix).split(", ")[-1].rpartition(".")[2]

    async def close(self) -> None:
        if self._checkpoints is not None:
            await self._checkpoints.close()
        self.file.close()
        self.locks.close()


class _Checkpoints:
    """A backend's WAL checkpoints, off the event loop (see `SqliteBackend`)."""

    def __init__(self, file: Database) -> None:
        self.path = file.path
        file.connection.execute("PRAGMA wal_autocheckpoint=0")
        self._commits = 0
        self._running: asyncio.Future[None] | None = None
        self._conn: sqlite3.Connection | None = None
        """The checkpointing connection, opened in the first worker that needs it."""

    def committed(self) -> None:
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and self._running is None:
            self._commits = 0
            self._running = asyncio.get_running_loop().run_in_executor(None, self._checkpoint)
            self._running.add_done_callback(self._done)

    def _checkpoint(self) -> None:
        if self._conn is None:
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=5.0)
        # PASSIVE: copies what no reader still needs and waits for nobody; the rest goes next time.
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _done(self, done: asyncio.Future[None]) -> None:
        self._running = None
        if not done.cancelled() and done.exception() is not None:
            # A checkpoint that failed (a disk error) is tried again after the next commits;
            # the WAL keeps every transaction meanwhile, so nothing is lost.
            _log.warning(
                f"checkpoint of {self.path} failed: {done.exception()}",
                extra={"fields": {"event": "checkpoint_failed", "path": str(self.path)}},
            )

    async def close(self) -> None:
        if self._running is not None:
            await asyncio.wait({self._running})
        if self._conn is not None:
            self._conn.close()


def lock_offset(key: str) -> int:
    """The byte of the sidecar that stands for `key`: 62 bits of a hash, so `offset + 1` stays
    far inside a signed 64-bit `off_t`."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest()) >> 2


_FLOCK = struct.Struct("hhqqi")
"""Linux's `struct flock` (64-bit): type, whence, start, length, pid (0 for an OFD lock)."""


class FileLocks:
    """Named locks across processes, one byte of a sidecar file per key, held for a block.

    Within the process a byte is one asyncio lock too: the kernel lets a descriptor
    take a byte it holds again and drops it at the first unlock, whichever key took
    it, so two tasks never hold one byte at once: another key that hashes to the
    same byte waits (as it would in another process). A block nested in one that
    holds the byte (the same key, or a colliding one) shares it, as PostgreSQL's
    nested `lock` shares its connection. A wait for another process polls
    (`LOCK_POLL`) until the byte is free or the waiting call is cancelled.
    """

    def __init__(self, path: Path | None, offset: Callable[[str], int] = lock_offset) -> None:
        """`path`: the sidecar, made at the first hold if missing (None: an anonymous file, for a
        database in memory, which no other process can open)."""
        self.path = path
        self.offset = offset
        self._fd = -1
        self._bytes: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        self._held: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
            f"bytes held on {path}", default=frozenset()
        )

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        byte = self.offset(key)
        held = self._held.get()
        if byte in held:
            yield
            return
        local = self._bytes.get(byte)
        if local is None:
            local = self._bytes[byte] = asyncio.Lock()
        async with local:
            pause, longest = LOCK_POLL
            while not self._set(fcntl.F_WRLCK, byte):
                await asyncio.sleep(pause)
                pause = min(pause * 2, longest)
            token = self._held.set(held | {byte})
            try:
                yield
            finally:
                self._held.reset(token)
                self._set(fcntl.F_UNLCK, byte)

    def _set(self, kind: int, byte: int) -> bool:
        """Lock or unlock `byte` without waiting; False if another descriptor holds it."""
        if self._fd < 0:
            self._fd = (
                os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR, 0o600)
                if self.path is None
                else os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            )
        try:
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def close(self) -> None:
        """Let go of every lock (closing the descriptor drops them); closing again does nothing."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


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
