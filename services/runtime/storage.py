"""The embedded store: one SQLite file per service, plus the request log for replays.

Each service owns one `Database` (WAL mode, `var/<service>/<service>.db`);
nothing else opens that file. Repositories built on it keep SQL portable so a
PostgreSQL backend can replace it later without touching servicers.

Calls run on the event loop's thread: they are short, indexed transactions
(tens of microseconds on this machine), cheaper than a hop to a thread pool;
see docs/architecture.md.

`Database.idempotent` implements AIP-155: the first answer to a `request_id`
is stored in the same transaction as the write it describes, so a repeat gets
exactly that answer, across restarts; the same key with a different request
is refused with INVALID_ARGUMENT reason REQUEST_ID_REUSED.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message

from .errors import InvalidArgument

M = TypeVar("M", bound=Message)

_REQUEST_LOG = """
CREATE TABLE IF NOT EXISTS request_log (
    method      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response    BLOB NOT NULL,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (method, request_id)
)
"""


WAL_WAIT = 10.0
"""How long opening a database waits for another process switching it to WAL."""


class Database:
    """A service's own SQLite database with versioned migrations."""

    def __init__(self, path: Path | str, migrations: Sequence[str]) -> None:
        """`migrations[i]` takes the schema from version i to i+1; never edit a released one."""
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
        try:
            self._migrate([_REQUEST_LOG, *migrations])
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

    def _migrate(self, migrations: Sequence[str]) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(migrations[version:], start=version + 1):
            with self.transaction() as tx:
                # Replicas of a service open its file at the same moment: read the version
                # again under the write lock, so only the first one applies each migration.
                if tx.execute("PRAGMA user_version").fetchone()[0] >= number:
                    continue
                for statement in _statements(script):
                    tx.execute(statement)
                tx.execute(f"PRAGMA user_version={number}")

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

    def replay(self, method: str, request: Message, response_type: type[M]) -> M | None:
        """The stored answer to `request.request_id`, or None if it is new (or absent).

        Raises INVALID_ARGUMENT REQUEST_ID_REUSED if the key answered another request.
        """
        request_id: str = getattr(request, "request_id", "")
        if not request_id:
            return None
        return self._stored(self._conn, method, request_id, fingerprint(request), response_type)

    def idempotent(
        self,
        method: str,
        request: Message,
        response_type: type[M],
        write: Callable[[sqlite3.Connection], M],
    ) -> M:
        """Run `write` once per `request.request_id`; repeats get the stored answer."""
        request_id: str = getattr(request, "request_id", "")
        if not request_id:
            with self.transaction() as tx:
                return write(tx)
        digest = fingerprint(request)
        with self.transaction() as tx:
            stored = self._stored(tx, method, request_id, digest, response_type)
            if stored is not None:
                return stored
            response = write(tx)
            tx.execute(
                "INSERT INTO request_log (method, request_id, fingerprint, response, create_time) "
                "VALUES (?, ?, ?, ?, ?)",
                (method, request_id, digest, response.SerializeToString(), time.time_ns()),
            )
            return response

    @staticmethod
    def _stored(
        conn: sqlite3.Connection, method: str, request_id: str, digest: str, response_type: type[M]
    ) -> M | None:
        row = conn.execute(
            "SELECT fingerprint, response FROM request_log WHERE method = ? AND request_id = ?",
            (method, request_id),
        ).fetchone()
        if row is None:
            return None
        if row["fingerprint"] != digest:
            raise InvalidArgument.field(
                "request_id",
                f"{request_id!r} was already used for a different {method} request",
                reason="REQUEST_ID_REUSED",
            )
        return response_type.FromString(row["response"])

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


def fingerprint(request: Message) -> str:
    """A digest of the request without its request_id: what 'the same request' means."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()
