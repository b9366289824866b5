"""`mesh migrate [--check] [SERVICE]`: bring each service's database to its newest schema, or say what is due.

A service applies its pending migrations itself when it starts (under the
engine's lock, so replicas starting together migrate once); this command
does the same ahead of time, e.g. as a deploy step before new code starts,
and `--check` only reports (exit 1 if anything is pending).

Creating a missing PostgreSQL database is this command's job (and `mesh up`'s,
which calls `ensure_databases`), never a service's: it takes the CREATEDB
right, which a service's own role should not need. It goes through the
`postgres` maintenance database with the service's credentials.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import psycopg

from services.runtime.config import MeshConfig, ServiceConfig
from services.runtime.migrations import Migration
from services.runtime.storage import Database, sqlite_path


@dataclass(frozen=True)
class Outcome:
    """What migrating (or checking) one service's database came to."""

    service: str
    database: str
    """Its SQLite file, or `host:port/database`."""
    migrations: list[Migration]
    """Applied now (or, with --check, pending)."""
    problem: str = ""


def migrations_dir(service: ServiceConfig) -> Path | None:
    """The `migrations/` directory beside the service's app module (its package's), if it keeps data."""
    package = service.module.rpartition(".")[0]
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(next(iter(spec.submodule_search_locations))) / "migrations"
    return directory if directory.is_dir() else None


def database_of(config: MeshConfig, service: ServiceConfig) -> str:
    """Where a service's data lives, as operators name it (no password)."""
    if service.storage.backend == "sqlite":
        return str(sqlite_path(config, service))
    from services.runtime.postgres import describe

    return describe(service.storage.dsn_for(service.name))


def ensure_databases(config: MeshConfig, services: list[ServiceConfig]) -> list[str]:
    """Create the PostgreSQL databases of `services` that do not exist yet; the ones created."""
    from services.runtime.postgres import ensure_database

    wanted = [s for s in services if s.storage.backend == "postgres" and migrations_dir(s) is not None]

    def ensure(service: ServiceConfig) -> bool:
        return ensure_database(service.storage.dsn_for(service.name), service.storage.connect_timeout)

    # Side by side: each CREATE DATABASE waits for its WAL to reach the disk, and waits overlap
    # (six databases: 3.5-4.4 s one after another, 1.7-2.3 s together, on the loaded 2-core VM).
    with concurrent.futures.ThreadPoolExecutor(max(1, len(wanted))) as pool:
        made = list(pool.map(ensure, wanted))
    return [database_of(config, s) for s, new in zip(wanted, made, strict=True) if new]


def migrate(config: MeshConfig, service: ServiceConfig, check: bool = False) -> Outcome:
    """Apply (or with `check`, list) the pending migrations of one service's database."""
    directory = migrations_dir(service)
    where = database_of(config, service)
    if directory is None:
        return Outcome(service.name, where, [], "keeps no data (no migrations directory)")
    if service.storage.backend == "sqlite":
        path = sqlite_path(config, service)
        if check and not path.exists():
            database = Database(":memory:", directory, apply=False)  # what a new file would get
        else:
            database = Database(path, directory, apply=not check)
        try:
            return Outcome(service.name, where, database.pending() if check else database.applied)
        finally:
            database.close()
    from services.runtime.postgres import PostgresBackend, database_exists, ensure_database

    storage = service.storage
    dsn = storage.dsn_for(service.name)
    backend = PostgresBackend(dsn, directory, connect_timeout=storage.connect_timeout)
    try:
        if check and not database_exists(dsn, storage.connect_timeout):
            return Outcome(service.name, where, backend.migrations, "")  # all of it, once it is made
        ensure_database(dsn, storage.connect_timeout)
        return Outcome(service.name, where, backend.run_migrations(check=check))
    except psycopg.OperationalError as error:
        return Outcome(service.name, where, [], str(error).strip().splitlines()[0])


def report(outcomes: list[Outcome], check: bool) -> tuple[str, int]:
    """The table `mesh migrate` prints, and its exit code: 1 for a problem, or anything pending on a check."""
    width = max((len(o.service) for o in outcomes), default=0)
    lines, code = [], 0
    for outcome in outcomes:
        names = ", ".join(m.label for m in outcome.migrations)
        if outcome.problem:
            state = outcome.problem
            code = code if outcome.problem.startswith("keeps no data") else 1
        elif check:
            state = f"pending: {names}" if names else "up to date"
            code = 1 if names else code
        else:
            state = f"applied: {names}" if names else "up to date"
        lines.append(f"{outcome.service:<{width}}  {outcome.database}  {state}")
    return "\n".join(lines), code
