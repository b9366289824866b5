"""PostgreSQL behind the kit's `Backend` seam: psycopg 3's async pool, one database per service.

Nothing blocks the event loop: every call awaits a pooled connection
(psycopg_pool's `AsyncConnectionPool`, `pool_min` .. `pool_max` of them).
Connections are in autocommit mode, so a read outside a transaction is one
statement and never leaves a transaction open, and each has the configured
`statement_timeout`. Rows come back as dicts.

- **Placeholders.** The kit and the stores write `?`; `pyformat` rewrites an
  SQL text once (cached) to psycopg's `%s`, and a literal `%` to `%%`.
  Parameters are always bound by the server, never formatted into the text.
- **Row locks.** A row read inside a transaction to be changed is read `FOR
  UPDATE` (`row_lock`), so two transactions changing one row take turns, as
  SQLite's single writer makes them; rows claimed for work are read `FOR
  UPDATE SKIP LOCKED` (`skip_locked`), so replicas claim different ones.
- **Advisory locks.** `Tx.lock(key)` holds `pg_advisory_xact_lock(hashtext(key))`
  until the transaction ends; `lock(key)` holds the same lock across the
  transactions of a block (a step that calls other services in between), in a
  transaction of its own on a connection of a second pool (`lock_pool`, at most
  `pool_max` at once), so holders never starve the block's own queries of
  connections. A nested `lock` of the same task shares its connection.
  Lock connections have no statement timeout: a wait ends when the holder is
  done or the waiting call is cancelled (its deadline).
- **Notifications.** `Tx.notify` is `pg_notify`, sent when the transaction
  commits, in commit order; `listen(channel)` follows a channel on a
  connection of its own, and reconnects (logging it) after a drop, saying
  None each time so the listener reads what it may have missed from the table.
- **Unique violations** name their constraint; every unique constraint and
  index is named `<table>_<column>_key` (PostgreSQL's own default for a
  column's UNIQUE), from which the column follows.
- **An unreachable database** (refused, terminated, no pooled connection in
  time, a statement past its timeout) is UNAVAILABLE `DATABASE_UNAVAILABLE`
  naming the database, never a traceback; a broken connection leaves the
  pool and is replaced. The pool tries a lost connection again with its
  doubling pause for `connect_timeout` only, then leaves it to the next call
  that waits: with psycopg_pool's default (5 minutes of doubling pauses) a
  database back after a 20 s outage was used 9-10 s later, now at once.
- **Readiness** (readiness.py) asks `ping`, a `SELECT 1` on a connection of
  its own: a pool busy with calls is not a database out of reach.
- **psycopg_pool's own lines** about connections it lost or could not open
  (a warning per attempt, several a second per pool during an outage) are
  debug lines here (`quiet_pool_log`): the outage is told once, by readiness
  (`storage_unreachable`) and by the calls that fail. Its other warnings
  (a connection returned mid-transaction: a bug) stay warnings.
- **Migrations** (migrations.py) run when the backend opens, on a connection
  of their own, each in a transaction holding `pg_advisory_xact_lock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from . import log
from .errors import Unavailable
from .migrations import Migration, Source, load, migrate, pending
from .resources import Backend, Row

MIGRATION_LOCK = 0x6D657368_6D696772
"""The advisory lock migrators of one database take turns on ("meshmigr"; each database has its own)."""
MAINTENANCE_DB = "postgres"
RECONNECT_PAUSE = (0.1, 5.0)
"""How long `listen` waits before connecting again after a failure: doubling from the first to the second."""

_log = log.get_logger("rideshare.runtime.postgres")

POOL_LOGGER = "psycopg.pool"
CONNECTION_TROUBLE = (
    "error connecting in",
    "reconnection attempt in pool",
    "discarding broken connection",
    "discarding closed connection",
)
"""How psycopg_pool's warnings about a lost or refused connection begin (psycopg_pool 3.2-3.3)."""


class _ConnectionTroubleAsDebug(logging.Filter):
    """psycopg_pool's warnings of CONNECTION_TROUBLE as debug records: kept when debug is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith(CONNECTION_TROUBLE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(POOL_LOGGER).isEnabledFor(logging.DEBUG)
        return True


@functools.cache
def quiet_pool_log() -> None:
    """Lower psycopg_pool's per-attempt connection warnings to debug (once per process)."""
    logging.getLogger(POOL_LOGGER).addFilter(_ConnectionTroubleAsDebug())


@functools.lru_cache(maxsize=4096)
def pyformat(sql: str) -> str:
    """The kit's `?` placeholders as psycopg's `%s`, and a literal `%` as `%%`; once per SQL text."""
    parts = sql.split("'")  # even parts are outside string literals ('' inside one keeps the parity)
    if any("?" in literal for literal in parts[1::2]):
        raise ValueError(f"a '?' inside a string literal cannot be told from a placeholder: {sql!r}")
    return "'".join(
        part.replace("%", "%%").replace("?", "%s") if i % 2 == 0 else part.replace("%", "%%")
        for i, part in enumerate(parts)
    )


def describe(dsn: str) -> str:
    """`host:port/database`: how errors and `mesh status` name a database (never its password)."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "localhost")
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or ''}"


class PostgresBackend(Backend):
    """A service's PostgreSQL database as the kit's backend."""

    row_lock = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(
        self,
        dsn: str,
        migrations: Source,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        statement_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        quiet_pool_log()
        self.dsn = dsn
        self.database = describe(dsn)
        self.migrations = load(migrations, "postgres")
        self.applied: list[Migration] = []
        """The migrations `open` applied."""
        self.connect_timeout = connect_timeout
        self._options = _connection(dsn, connect_timeout, statement_timeout)
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] = AsyncConnectionPool(
            dsn,
            min_size=pool_min,
            max_size=pool_max,
            kwargs={**self._options, "row_factory": dict_row},
            open=False,
            timeout=connect_timeout,
            reconnect_timeout=connect_timeout,
            name=self.database,
        )
        self.trouble: asyncio.Event = asyncio.Event()
        self._probe: psycopg.AsyncConnection[Any] | None = None
        self.lock_pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            dsn,
            min_size=0,
            max_size=pool_max,
            kwargs=_connection(dsn, connect_timeout, 0),  # a wait for a lock is bounded by its caller
            open=False,
            timeout=connect_timeout,
            reconnect_timeout=connect_timeout,
            name=f"{self.database} locks",
        )
        self._held: contextvars.ContextVar[psycopg.AsyncConnection[tuple[Any, ...]] | None] = (
            contextvars.ContextVar(f"locks held on {self.database}", default=None)
        )

    async def open(self) -> None:
        """Apply pending migrations (`applied` says which), then fill the pool."""
        with self._unavailable():
            self.applied = await asyncio.to_thread(self.run_migrations)
            await self.pool.open(wait=True, timeout=self.connect_timeout)
            await self.lock_pool.open()

    def run_migrations(self, check: bool = False) -> list[Migration]:
        """Apply the pending migrations (or with `check`, list them); blocking, for a thread or a tool."""
        with psycopg.connect(self.dsn, row_factory=dict_row, **self._options) as conn:
            session = _Migrator(conn)
            return pending(session, self.migrations) if check else migrate(session, self.migrations)

    async def pending(self) -> list[Migration]:
        """The migrations not applied yet (`mesh migrate --check`), writing nothing."""
        with self._unavailable():
            return await asyncio.to_thread(self.run_migrations, True)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresTx]:
        with self._unavailable():
            async with self.pool.connection() as conn, conn.transaction():
                yield _PostgresTx(conn)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._unavailable():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(pyformat(sql), params)
                return list(await cursor.fetchall()) if cursor.description else []

    async def query_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self._unavailable():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(pyformat(sql), params)
                return await cursor.fetchone() if cursor.description else None

    def unique_violation(self, error: BaseException) -> str | None:
        if not isinstance(error, psycopg.errors.UniqueViolation):
            return None
        constraint, table = error.diag.constraint_name or "", error.diag.table_name or ""
        if not (constraint.startswith(f"{table}_") and constraint.endswith("_key")):
            return None
        return constraint[len(table) + 1 : -len("_key")] or None

    async def ping(self) -> None:
        """`SELECT 1` on the probe connection, or on a new one if that one is gone (a terminated
        connection is no outage); UNAVAILABLE if neither answers within `connect_timeout`."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self._probe is not None:
                    try:
                        await self._probe.execute("SELECT 1")
                        return
                    except psycopg.Error:
                        await self._close_probe()
                self._probe = await psycopg.AsyncConnection.connect(self.dsn, **self._options)
                await self._probe.execute("SELECT 1")
        except (psycopg.Error, TimeoutError) as error:  # whatever went wrong, it did not answer
            await self._close_probe()
            raise unavailable(self.database, error) from error

    async def _close_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            await probe.close()

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        held = self._held.get()
        if held is not None:  # nested in this task: the outer lock's transaction holds this key too
            with self._unavailable():
                await held.execute(_ADVISORY_LOCK, (key,))
            yield
            return
        with self._unavailable():
            async with self.lock_pool.connection() as conn:
                token = self._held.set(conn)
                try:
                    await conn.execute("BEGIN")
                    await conn.execute(_ADVISORY_LOCK, (key,))
                    yield
                finally:
                    self._held.reset(token)
                    # Releases the lock; a lost connection released it already, and the block's
                    # own work is committed, so its outcome stands either way.
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute("ROLLBACK")

    async def listen(self, channel: str) -> AsyncGenerator[str | None, None]:
        pause = RECONNECT_PAUSE[0]
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, **self._options)
                async with conn:
                    await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
                    pause = RECONNECT_PAUSE[0]
                    yield None
                    async for notification in conn.notifies():
                        yield notification.payload
            except psycopg.OperationalError as error:
                _log.warning(
                    f"listening on {self.database} failed; connecting again in {pause:g} s",
                    extra={
                        "fields": {"event": "listen_lost", "database": self.database, "error": f"{error}"}
                    },
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECONNECT_PAUSE[1])

    async def close(self) -> None:
        await self._close_probe()
        await self.lock_pool.close()
        await self.pool.close()

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        """The database out of reach, as the caller should see it: UNAVAILABLE, naming it."""
        try:
            yield
        except psycopg.OperationalError as error:
            self.trouble.set()
            raise unavailable(self.database, error) from error


def _connection(dsn: str, connect_timeout: float, statement_timeout: float) -> dict[str, Any]:
    """Connection settings: autocommit, the timeouts, and the options the DSN carries (a search_path, say)."""
    return {
        "autocommit": True,
        "connect_timeout": max(1, round(connect_timeout)),
        "options": f"{conninfo_to_dict(dsn).get('options') or ''} "
        f"-c statement_timeout={round(statement_timeout * 1000)}".strip(),
    }


def unavailable(database: str, error: BaseException) -> Unavailable:
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, TimeoutError):
        cause = "no answer in time"
    return Unavailable(
        f"database {database} is unavailable: {cause}",
        reason="DATABASE_UNAVAILABLE",
        metadata={"database": database},
    )


class _PostgresTx:
    """An open transaction on one pooled connection."""

    def __init__(self, conn: psycopg.AsyncConnection[DictRow]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = await self._conn.execute(pyformat(sql), params)
        return cursor.rowcount

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = await self._conn.execute(pyformat(sql), params)
        return list(await cursor.fetchall()) if cursor.description else []

    async def query_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        cursor = await self._conn.execute(pyformat(sql), params)
        return await cursor.fetchone() if cursor.description else None

    async def lock(self, key: str) -> None:
        await self._conn.execute(_ADVISORY_LOCK, (key,))

    async def notify(self, channel: str, payload: str) -> None:
        await self._conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


_ADVISORY_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%s))"
"""A key's lock until the transaction ends; `hashtext` is 32-bit, so MIGRATION_LOCK never meets one."""


class _Migrator:
    """The migration runner's session on a plain (sync) connection; a transaction holds the lock."""

    def __init__(self, conn: psycopg.Connection[DictRow]) -> None:
        self._conn = conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            yield

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = self._conn.execute(pyformat(sql), params)
        return list(cursor.fetchall()) if cursor.description else []

    def script(self, sql: str) -> None:
        self._conn.execute(sql)  # no parameters: several statements in one go, `%` as written

    def legacy_version(self) -> int:
        return 0


def database_exists(dsn: str, timeout: float = 5.0) -> bool:
    """Whether the database `dsn` names exists (asked of the `postgres` maintenance database)."""
    with _maintenance(dsn, timeout) as conn:
        return _exists(conn, dsn)


def ensure_database(dsn: str, timeout: float = 5.0) -> bool:
    """Create the database `dsn` names unless it exists (through the `postgres` maintenance
    database, with the same credentials); whether it was created. Operators' tools call it
    (`mesh migrate`, `mesh up`), not services: creating databases is not a service's right."""
    name = str(conninfo_to_dict(dsn).get("dbname") or "")
    with _maintenance(dsn, timeout) as conn:
        if _exists(conn, dsn):
            return False
        try:
            conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False  # another migrator made it at the same moment
    return True


def _maintenance(dsn: str, timeout: float) -> psycopg.Connection[tuple[Any, ...]]:
    admin = psycopg.conninfo.make_conninfo(dsn, dbname=MAINTENANCE_DB)
    return psycopg.connect(admin, autocommit=True, connect_timeout=max(1, round(timeout)))


def _exists(conn: psycopg.Connection[tuple[Any, ...]], dsn: str) -> bool:
    name = str(conninfo_to_dict(dsn).get("dbname") or "")
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
