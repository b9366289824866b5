"""PostgreSQL for the tests: a database of its own per test module, dropped afterwards.

The server is the one every machine of the project runs (127.0.0.1:5432,
trust authentication, user `postgres`). Without it the PostgreSQL cases are
skipped with one line saying so, unless `MESH_REQUIRE_POSTGRES=1` (.ci/run),
which fails them instead. Names are random (`test_<hex>`), so parallel runs,
xdist workers and `make run` never meet.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from services.runtime.migrations import Source
from services.runtime.postgres import PostgresBackend
from services.runtime.resources import Backend
from services.runtime.storage import SqliteBackend

SERVER = "postgresql://postgres@127.0.0.1:5432"
REQUIRE_VARIABLE = "MESH_REQUIRE_POSTGRES"
UNREACHABLE = "PostgreSQL is not reachable"
"""How a skip for want of the server begins (conftest.py folds them all into one summary line)."""


@functools.cache
def _unreachable() -> str:
    """Why the server cannot be used ("" if it can); asked once per test process."""
    try:
        psycopg.connect(f"{SERVER}/postgres", connect_timeout=3).close()
    except psycopg.OperationalError as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ""


def require() -> None:
    """Skip the calling test without PostgreSQL, or fail it where PostgreSQL is required."""
    if why := _unreachable():
        message = f"{UNREACHABLE} at {SERVER} ({why}): its cases are skipped"
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"{message}, and {REQUIRE_VARIABLE}=1 requires it", pytrace=False)
        pytest.skip(message)


def _admin() -> psycopg.Connection:
    return psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5)


class Databases:
    """Databases one test module makes, all named `test_<hex>...`, all dropped by `close`."""

    def __init__(self) -> None:
        self.prefix = f"test_{secrets.token_hex(5)}"
        self._schemas = 0

    def create(self, suffix: str = "") -> str:
        """A new empty database; its DSN."""
        name = f"{self.prefix}_{suffix}" if suffix else self.prefix
        with _admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"{SERVER}/{name}"

    def create_once(self) -> str:
        """The module's one database (made on first use); its DSN."""
        if not hasattr(self, "_module_dsn"):
            self._module_dsn = self.create()
        return self._module_dsn

    def per_service(self) -> str:
        """A `dsn` for mesh.toml with a database per service (`mesh migrate`/`mesh up` create them)."""
        return f"{SERVER}/{self.prefix}_{{service}}"

    def schema_dsn(self, dsn: str, schema: str) -> str:
        """`dsn` with its own schema first on the search path (created here): a fresh namespace, cheaply."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        return f"{dsn}?options={quote(f'-c search_path={schema}')}"

    def new_schema_name(self) -> str:
        self._schemas += 1
        return f"t{self._schemas}"

    def close(self) -> None:
        """Drop them all, side by side: each DROP DATABASE waits for a checkpoint, and concurrent
        ones share it (six databases of a mesh: 2.0 s one after another, 0.3 s together)."""
        with _admin() as conn:
            pattern = self.prefix.replace("_", r"\_") + "%"
            names = [
                name
                for (name,) in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE %s", (pattern,)
                )
            ]
        with concurrent.futures.ThreadPoolExecutor(max(1, len(names))) as pool:
            list(pool.map(_drop, names))


def _drop(name: str) -> None:
    with _admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


ENGINES = ("sqlite", "postgres")


class Backends:
    """Opens the kit's backends on one engine for a test; the same name is the same database.

    SQLite: a file in the test's directory. PostgreSQL: a schema of the module's
    database, its own per test (a fresh namespace for a few milliseconds, where a
    database takes a few hundred). Every backend opened is closed at teardown.
    """

    def __init__(
        self, engine: str, directory: Path, runner: asyncio.Runner, databases: Databases | None = None
    ) -> None:
        self.engine = engine
        self.directory = directory
        self.runner = runner
        self._databases = databases
        self._dsn = databases.create_once() if databases is not None else ""
        self._test = databases.new_schema_name() if databases is not None else ""
        self._opened: list[Backend] = []

    def dsn(self, name: str = "db") -> str:
        assert self._databases is not None, "only PostgreSQL has a DSN"
        return self._databases.schema_dsn(self._dsn, f"{self._test}_{name}")

    def open(self, migrations: Source, name: str = "db") -> Backend:
        """A backend on database `name`, migrated; another call with the same name is another connection."""
        backend: Backend
        if self.engine == "sqlite":
            backend = SqliteBackend(self.directory / f"{name}.db", migrations)
        else:
            backend = PostgresBackend(self.dsn(name), migrations, pool_min=1, pool_max=4)
            self.runner.run(backend.open())
        self._opened.append(backend)
        return backend

    def close(self) -> None:
        for backend in reversed(self._opened):
            self.runner.run(backend.close())


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    """A migrations directory holding `files` (name -> SQL), as a service keeps one."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


# -- database faults -----------------------------------------------------------------------------------
# PostgreSQL is shared here (every helper's tests and `make run` use the one server), so it is never
# stopped: a database is taken out of reach on its own, or a proxy in front of the server goes away.


def terminate(*dsns: str) -> int:
    """`pg_terminate_backend` every connection to the databases `dsns` name; how many there were."""
    names = [str(conninfo_to_dict(dsn)["dbname"]) for dsn in dsns]
    with _admin() as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
            (names,),
        ).fetchall()
    return len(rows)


def allow_connections(allowed: bool, *dsns: str) -> None:
    """`ALTER DATABASE ... ALLOW_CONNECTIONS`; refusing also terminates the open connections."""
    with _admin() as conn:
        for dsn in dsns:
            name = sql.Identifier(str(conninfo_to_dict(dsn)["dbname"]))
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(name, sql.Literal(allowed)))
    if not allowed:
        terminate(*dsns)


@contextlib.contextmanager
def out_of_reach(*dsns: str) -> Iterator[None]:
    """The databases refuse connections and lose the open ones, as if their server were down, until
    the block ends (then they take connections again, whatever happened inside)."""
    allow_connections(False, *dsns)
    try:
        yield
    finally:
        allow_connections(True, *dsns)


class Proxy:
    """A TCP proxy to the PostgreSQL server on a port of its own, on the test's event loop: `stop()`
    is the server going away (open connections cut, the port refusing), `start()` its return on the
    same port. What a restart of the server looks like to its clients, without restarting it."""

    def __init__(self, port: int, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.port = port
        self.target = target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def dsn(self, database: str) -> str:
        """`database` (a DSN or a name) through this proxy."""
        name = conninfo_to_dict(database).get("dbname", database) if "://" in database else database
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
            for end in (writer, up_writer):
                end.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
