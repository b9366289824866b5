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
import functools
import os
import secrets
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

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
