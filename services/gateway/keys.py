"""API keys: who may call the bridge, stored hashed in the gateway's own SQLite database.

A key is `rk_` + 43 random URL-safe characters (256 bits), shown once by
`mesh keys create`. Only its SHA-256 is stored: with that much entropy a slow
hash adds nothing, and a lookup stays one dictionary access per request.
The gateway keeps the active keys in memory. SQLite's `data_version` tells
when another connection (`mesh keys`) changed the database: it is checked on
an unknown key and at most every 0.1 s otherwise, so a new key works at once
and a revoked one stops within about 0.1 s, without a restart.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from services.runtime.config import MeshConfig
from services.runtime.storage import Database

PREFIX = "rk_"
_CHECK_EVERY = 0.1

MIGRATIONS = [
    """
    CREATE TABLE api_keys (
        name                TEXT PRIMARY KEY,
        hash                TEXT NOT NULL UNIQUE,
        shown_prefix        TEXT NOT NULL,
        create_time         INTEGER NOT NULL,
        revoke_time         INTEGER,
        requests_per_second REAL,
        burst               INTEGER
    );
    """
]


class KeyProblem(Exception):
    """A `mesh keys` request that cannot be done (duplicate name, no such key)."""


@dataclass(frozen=True)
class ApiKey:
    """A key as stored: never the key itself."""

    name: str
    shown_prefix: str
    """The first characters of the key, to recognise it in listings."""
    create_time: int
    revoke_time: int | None
    requests_per_second: float | None
    """Overrides `[gateway.rate_limit]` for this key when set."""
    burst: int | None

    @property
    def active(self) -> bool:
        return self.revoke_time is None


def database_path(config: MeshConfig) -> Path:
    return config.data_dir / "gateway" / "gateway.db"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The api_keys table, and an in-memory view of the active keys for lookups."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._active: dict[str, ApiKey] = {}
        self._version: int | None = None
        self._checked_at = float("-inf")

    @classmethod
    def open(cls, config: MeshConfig) -> KeyStore:
        return cls(Database(database_path(config), MIGRATIONS))

    def create(
        self, name: str, requests_per_second: float | None = None, burst: int | None = None
    ) -> tuple[ApiKey, str]:
        """A new key named `name`; returns the record and the key, which is not stored."""
        if not name or len(name) > 100:
            raise KeyProblem("a key name is 1 to 100 characters")
        key = PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(name, key[:10], time.time_ns(), None, requests_per_second, burst)
        with self.database.transaction() as tx:
            if tx.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone():
                raise KeyProblem(f"a key named {name!r} already exists (revoked keys keep their name)")
            tx.execute(
                "INSERT INTO api_keys"
                " (name, hash, shown_prefix, create_time, revoke_time, requests_per_second, burst)"
                " VALUES (?, ?, ?, ?, NULL, ?, ?)",
                (name, _digest(key), record.shown_prefix, record.create_time, requests_per_second, burst),
            )
        self._version = None
        return record, key

    def list(self) -> list[ApiKey]:
        rows = self.database.query(
            "SELECT name, shown_prefix, create_time, revoke_time, requests_per_second, burst"
            " FROM api_keys ORDER BY create_time"
        )
        return [ApiKey(*tuple(row)) for row in rows]

    def revoke(self, name: str) -> ApiKey:
        with self.database.transaction() as tx:
            row = tx.execute("SELECT revoke_time FROM api_keys WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise KeyProblem(f"no key named {name!r}")
            if row["revoke_time"] is None:
                tx.execute("UPDATE api_keys SET revoke_time = ? WHERE name = ?", (time.time_ns(), name))
        self._version = None
        return next(k for k in self.list() if k.name == name)

    def find(self, key: str) -> ApiKey | None:
        """The active key record for a presented key, or None."""
        now = time.monotonic()
        if now - self._checked_at > _CHECK_EVERY:
            self._refresh(now)
        digest = _digest(key)
        found = self._active.get(digest)
        if found is None:
            self._refresh(now)
            found = self._active.get(digest)
        return found

    def _refresh(self, now: float) -> None:
        """Re-read the active keys if the database changed since they were read."""
        self._checked_at = now
        row = self.database.query_one("PRAGMA data_version")
        version = int(row[0]) if row is not None else -1
        if version == self._version:
            return
        rows = self.database.query(
            "SELECT hash, name, shown_prefix, create_time, revoke_time, requests_per_second, burst"
            " FROM api_keys WHERE revoke_time IS NULL"
        )
        self._active = {row["hash"]: ApiKey(*tuple(row)[1:]) for row in rows}
        self._version = version

    def close(self) -> None:
        self.database.close()


def development_key(config: MeshConfig) -> str:
    """The local development key, kept in plain text in `<data_dir>/gateway/dev-key` (0600).

    `make run` prints it, so the same key works across restarts; if it was revoked or
    the file is gone, a fresh key named `dev-<time>` replaces it.
    """
    path = database_path(config).parent / "dev-key"
    store = KeyStore.open(config)
    try:
        if path.exists():
            key = path.read_text().strip()
            if store.find(key) is not None:
                return key
        _, key = store.create(f"dev-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
    finally:
        store.close()
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def command(
    config: MeshConfig, action: str, name: str | None, rate: float | None, burst: int | None, as_json: bool
) -> int:
    """`mesh keys create NAME | list | revoke NAME`; the new key alone on stdout, notes on stderr."""
    import json
    import sys

    store = KeyStore.open(config)
    try:
        if action == "create":
            assert name is not None
            record, key = store.create(name, rate, burst)
            print(key)
            print(f"created API key {record.name!r}; it is shown only this once", file=sys.stderr)
        elif action == "revoke":
            assert name is not None
            record = store.revoke(name)
            print(f"revoked API key {record.name!r}")
        else:
            listed = store.list()
            if as_json:
                print(json.dumps([_as_dict(k) for k in listed], indent=2))
            else:
                print(_table(listed))
    except KeyProblem as exc:
        print(f"mesh keys {action}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _as_dict(key: ApiKey) -> dict[str, object]:
    return {
        "name": key.name,
        "prefix": key.shown_prefix,
        "create_time": _iso(key.create_time),
        "revoke_time": _iso(key.revoke_time) if key.revoke_time else None,
        "requests_per_second": key.requests_per_second,
        "burst": key.burst,
    }


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def _table(listed: list[ApiKey]) -> str:
    rows = [("NAME", "PREFIX", "CREATED", "STATUS", "RATE")]
    for key in listed:
        rate = f"{key.requests_per_second:g}/s burst {key.burst}" if key.requests_per_second else "default"
        rows.append(
            (
                key.name,
                key.shown_prefix + "…",
                _iso(key.create_time),
                "active" if key.active else "revoked",
                rate,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
