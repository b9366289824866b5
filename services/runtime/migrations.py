r"""Schema migrations: numbered SQL files per service, a variant per engine where they differ, one runner.

A service keeps its schema in `services/<name>/migrations/`: `0001_init.sql`,
`0002_sign_in.sql`, ... Each version is applied once, in order, in its own
transaction, and recorded in `schema_migrations` (version, name, applied_at).
Where SQLite and PostgreSQL differ (identity columns, BIGINT for nanosecond
times and int64 money, DOUBLE PRECISION for REAL, bytea for BLOB, the
case-insensitive email), `0001_init.postgres.sql` next to `0001_init.sql` is
PostgreSQL's text of the same version; a file without a variant is portable.
A line `\ir FILE` includes FILE, relative to the including file, as psql does
(the session tables passengers and drivers share live in the runtime's
directory). Version 0 is the runtime's own: the request log every store
replays from. Released files are never edited; a change is a new number.

Replicas that start together migrate once: each migration's transaction
first takes the database's write lock (SQLite's `BEGIN IMMEDIATE`) or a
transaction-scoped advisory lock (PostgreSQL's `pg_advisory_xact_lock`),
then reads what is applied. DDL is transactional in both engines, so a
migration that fails leaves the schema as it was, at the previous version.

Files made before this runner kept their version in `PRAGMA user_version`
(the request log counted as 1, then the service's scripts): such a file is
adopted, its versions 0 .. user_version - 1 recorded as applied.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .resources import Row

DIALECTS = ("sqlite", "postgres")
RUNTIME_MIGRATIONS = Path(__file__).with_name("migrations")
"""The runtime's own versions (0: the request log) and the files services include."""

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(sqlite|postgres))?\.sql$")
_INCLUDE = re.compile(r"^\\ir[ \t]+(\S+)[ \t]*$", re.MULTILINE)

TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)
"""
_APPLIED = "SELECT version FROM schema_migrations"
_RECORD = "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)"

Source = Path | Sequence[str]
"""A migrations directory, or scripts numbered 1, 2, ... in order (tests, the gateway's key store)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        """`0002_sign_in`, as the file is named."""
        return f"{self.version:04d}_{self.name}"


class MigrationError(Exception):
    """A migrations directory that cannot be read as one (a gap, a clash, a missing text)."""


def load(source: Source, dialect: str) -> list[Migration]:
    """The runtime's version 0, then the service's migrations, as `dialect` reads them."""
    if isinstance(source, Path):
        own = read(source, dialect)
    else:
        own = [Migration(number, "script", sql) for number, sql in enumerate(source, start=1)]
    return [*read(RUNTIME_MIGRATIONS, dialect, first=0), *own]


def read(directory: Path, dialect: str, first: int = 1) -> list[Migration]:
    """The numbered files of `directory`, each version in `dialect`'s variant if it has one."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}")
    versions: dict[int, dict[str | None, Path]] = {}
    for file in sorted(directory.glob("*.sql")):
        if match := _FILE.match(file.name):
            versions.setdefault(int(match[1]), {})[match[3]] = file
    found: list[Migration] = []
    for number, expected in zip(sorted(versions), range(first, first + len(versions)), strict=True):
        if number != expected:
            raise MigrationError(f"{directory}: version {expected:04d} is missing (found {number:04d})")
        texts = versions[number]
        names = {_FILE.match(p.name)[2] for p in texts.values()}  # type: ignore[index]
        if len(names) > 1:
            raise MigrationError(f"{directory}: version {number:04d} has several names: {sorted(names)}")
        path = texts.get(dialect) or texts.get(None)
        if path is None:
            raise MigrationError(f"{directory}: version {number:04d} has no text for {dialect}")
        found.append(Migration(number, names.pop(), _text(path)))
    return found


def _text(path: Path, depth: int = 0) -> str:
    """The file with its `\\ir` lines replaced by the files they name."""
    if depth > 4:
        raise MigrationError(f"{path}: includes nested too deep")
    text = path.read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda line: _text((path.parent / line[1]).resolve(), depth + 1), text)


class Session(Protocol):
    """A connection of one engine, as the runner uses it (storage.Database, postgres' sync adapter)."""

    def transaction(self) -> AbstractContextManager[Any]:
        """Writes all or nothing, holding the lock that keeps other migrators out."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Row]: ...

    def script(self, sql: str) -> None:
        """Run the statements of a migration."""
        ...

    def legacy_version(self) -> int:
        """The version a file made before `schema_migrations` recorded (SQLite's user_version)."""
        ...


def migrate(db: Session, migrations: Sequence[Migration]) -> list[Migration]:
    """Apply what is pending, each migration in its own transaction; the ones this call applied."""
    with db.transaction():
        applied = _applied(db, adopt=True)
    done: list[Migration] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        with db.transaction():
            # Another replica may have applied it since: look again under the lock.
            if migration.version in _applied(db):
                continue
            db.script(migration.sql)
            db.query(_RECORD, (migration.version, migration.name, time.time_ns()))
        done.append(migration)
    return done


def pending(db: Session, migrations: Sequence[Migration]) -> list[Migration]:
    """What `migrate` would apply, writing nothing."""
    try:
        with db.transaction():
            applied = _applied(db, adopt=True)
            raise _Undo
    except _Undo:
        pass
    return [m for m in migrations if m.version not in applied]


class _Undo(Exception):
    """Rolls back the bookkeeping a check did."""


def _applied(db: Session, adopt: bool = False) -> set[int]:
    if adopt:
        db.script(TABLE)
    versions = {int(row["version"]) for row in db.query(_APPLIED)}
    if adopt and not versions and (legacy := db.legacy_version()):
        stamp = time.time_ns()
        for version in range(legacy):
            db.query(_RECORD, (version, "adopted from user_version", stamp))
        versions = set(range(legacy))
    return versions
