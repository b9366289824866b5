"""API keys: which application calls the bridge, with what scopes, stored hashed in the gateway's database.

A key is `rk_` + 43 random URL-safe characters (256 bits), shown once by
`mesh keys create`. Only its SHA-256 is stored: with that much entropy a slow
hash adds nothing, and a lookup stays one dictionary access per request.
The gateway keeps the active keys in memory. SQLite's `data_version` tells
when another connection (`mesh keys`) changed the database: it is checked on
an unknown key and at most every 0.1 s otherwise, so a new key works at once
and a revoked one stops within about 0.1 s, without a restart.

A key names an application and carries scopes (`SCOPES`): none lets it call
the public API; `admin` adds the operators' methods (those the contracts
restrict to `ADMIN`); `rides` lets it act for signed-in passengers and drivers.
A key may expire (`--expires 30d`). Its last use is kept in memory and written
at most every `LAST_USED_EVERY` seconds, so `mesh keys list` can tell which
keys are idle without a write per request.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.runtime.config import MeshConfig
from services.runtime.storage import Database

PREFIX = "rk_"
_CHECK_EVERY = 0.1
LAST_USED_EVERY = 10.0
"""Seconds between two writes of the keys' last use."""
SCOPES = {
    "admin": "the operators' methods: listings of every passenger, driver, invoice and payment; refunds",
    "rides": "act for signed-in passengers and drivers (their bearer tokens)",
}
MAX_RATE = 10_000.0
"""Requests per second one key may be given; more is a typo, not a plan."""
MAX_BURST = 100_000
_DURATION_UNITS = {"m": 60, "h": 3600, "d": 86400}

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
    """,
    """
    ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
    ALTER TABLE api_keys ADD COLUMN expire_time INTEGER;
    ALTER TABLE api_keys ADD COLUMN last_used_time INTEGER;
    """,
]
_COLUMNS = (
    "name, shown_prefix, create_time, revoke_time, requests_per_second, burst, scopes, expire_time,"
    " last_used_time"
)


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
    scopes: frozenset[str] = frozenset()
    expire_time: int | None = None
    last_used_time: int | None = None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ApiKey:
        """A record from the columns `_COLUMNS`, in that order."""
        name, prefix, created, revoked, rate, burst, scopes, expires, used = row
        return cls(
            name,
            prefix,
            created,
            revoked,
            rate,
            burst,
            frozenset(s for s in scopes.split(",") if s),
            expires,
            used,
        )

    @property
    def active(self) -> bool:
        return self.revoke_time is None

    def expired(self, now_ns: int) -> bool:
        return self.expire_time is not None and self.expire_time <= now_ns

    @property
    def labels(self) -> frozenset[str]:
        """The visibility labels this key is granted: its scopes, upper-case (routes.restriction)."""
        return frozenset(scope.upper() for scope in self.scopes)


def parse_scopes(text: str) -> frozenset[str]:
    """`admin,rides` -> the scopes, each known; KeyProblem naming an unknown one."""
    scopes = frozenset(s.strip().lower() for s in text.split(",") if s.strip())
    unknown = sorted(scopes - SCOPES.keys())
    if unknown:
        raise KeyProblem(f"unknown scope {unknown[0]!r}; scopes are {', '.join(sorted(SCOPES))}")
    return scopes


def parse_expiry(text: str, now_ns: int) -> int:
    """`90m`, `12h`, `30d` from now -> the expiry time in ns; KeyProblem otherwise."""
    number, unit = text[:-1], text[-1:]
    if unit not in _DURATION_UNITS or not number.isdigit() or not 0 < int(number) <= 3650 * 24 * 60:
        raise KeyProblem(f"--expires wants a whole number of minutes, hours or days like 30d, got {text!r}")
    return now_ns + int(number) * _DURATION_UNITS[unit] * 1_000_000_000


def check_limits(requests_per_second: float | None, burst: int | None) -> None:
    """KeyProblem unless the rate and burst, where given, are positive and sane."""
    if requests_per_second is not None and not 0 < requests_per_second <= MAX_RATE:
        raise KeyProblem(
            f"--rate must be above 0 and at most {MAX_RATE:g} requests/s, got {requests_per_second:g}"
        )
    if burst is not None and not 1 <= burst <= MAX_BURST:
        raise KeyProblem(f"--burst must be from 1 to {MAX_BURST}, got {burst}")


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
        self._used: dict[str, int] = {}
        """Key name -> last use (ns) not yet written."""
        self._written_at = time.monotonic()

    @classmethod
    def open(cls, config: MeshConfig) -> KeyStore:
        return cls(Database(database_path(config), MIGRATIONS))

    def create(
        self,
        name: str,
        requests_per_second: float | None = None,
        burst: int | None = None,
        scopes: frozenset[str] = frozenset(),
        expire_time: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key named `name`; returns the record and the key, which is not stored."""
        if not name or len(name) > 100 or not name.isprintable():
            raise KeyProblem("a key name is 1 to 100 printable characters")
        check_limits(requests_per_second, burst)
        unknown = sorted(scopes - SCOPES.keys())
        if unknown:
            raise KeyProblem(f"unknown scope {unknown[0]!r}; scopes are {', '.join(sorted(SCOPES))}")
        key = PREFIX + secrets.token_urlsafe(32)
        now = time.time_ns()
        if expire_time is not None and expire_time <= now:
            raise KeyProblem("the key would expire before it is made")
        record = ApiKey(name, key[:10], now, None, requests_per_second, burst, scopes, expire_time)
        with self.database.transaction() as tx:
            if tx.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone():
                raise KeyProblem(f"a key named {name!r} already exists (revoked keys keep their name)")
            tx.execute(
                "INSERT INTO api_keys (name, hash, shown_prefix, create_time, revoke_time,"
                " requests_per_second, burst, scopes, expire_time) VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?)",
                (
                    name,
                    _digest(key),
                    record.shown_prefix,
                    record.create_time,
                    requests_per_second,
                    burst,
                    ",".join(sorted(scopes)),
                    expire_time,
                ),
            )
        self._version = None
        return record, key

    def list(self) -> list[ApiKey]:
        self.flush()
        rows = self.database.query(f"SELECT {_COLUMNS} FROM api_keys ORDER BY create_time")
        return [ApiKey.from_row(tuple(row)) for row in rows]

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
        """The active, unexpired key record for a presented key (its use noted), or None."""
        now = time.monotonic()
        if now - self._checked_at > _CHECK_EVERY:
            self._refresh(now)
        digest = _digest(key)
        found = self._active.get(digest)
        if found is None:
            self._refresh(now)
            found = self._active.get(digest)
        if found is None:
            return None
        wall = time.time_ns()
        if found.expired(wall):
            return None
        self._used[found.name] = wall
        if now - self._written_at > LAST_USED_EVERY:
            self.flush()
        return found

    def flush(self) -> None:
        """Write the keys' last use noted since the last write."""
        self._written_at = time.monotonic()
        if not self._used:
            return
        used, self._used = self._used, {}
        with self.database.transaction() as tx:
            tx.executemany(
                "UPDATE api_keys SET last_used_time = MAX(COALESCE(last_used_time, 0), ?) WHERE name = ?",
                [(when, name) for name, when in used.items()],
            )

    def _refresh(self, now: float) -> None:
        """Re-read the active keys if the database changed since they were read."""
        self._checked_at = now
        row = self.database.query_one("PRAGMA data_version")
        version = int(row[0]) if row is not None else -1
        if version == self._version:
            return
        rows = self.database.query(f"SELECT hash, {_COLUMNS} FROM api_keys WHERE revoke_time IS NULL")
        self._active = {row["hash"]: ApiKey.from_row(tuple(row)[1:]) for row in rows}
        self._version = version

    def close(self) -> None:
        self.flush()
        self.database.close()


def development_key(config: MeshConfig) -> str:
    """The local development key, kept in plain text in `<data_dir>/gateway/dev-key` (0600).

    `make run` prints it, so the same key works across restarts; if it was revoked or
    the file is gone, a fresh key named `dev-<time>` replaces it. It has every scope:
    on a developer's machine the developer is the operator too.
    """
    path = database_path(config).parent / "dev-key"
    store = KeyStore.open(config)
    try:
        if path.exists():
            key = path.read_text().strip()
            if store.find(key) is not None:
                return key
        name = f"dev-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        _, key = store.create(name, scopes=frozenset(SCOPES))  # a developer is the operator too
    finally:
        store.close()
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


@dataclass(frozen=True)
class Command:
    """What `mesh keys` was asked to do."""

    action: str
    name: str | None = None
    rate: float | None = None
    burst: int | None = None
    scopes: str = ""
    expires: str | None = None
    as_json: bool = False


def command(config: MeshConfig, asked: Command) -> int:
    """`mesh keys create NAME | list | revoke NAME`; the new key alone on stdout, notes on stderr."""
    import json
    import sys

    action, name = asked.action, asked.name
    try:
        scopes = parse_scopes(asked.scopes)
        expire_time = parse_expiry(asked.expires, time.time_ns()) if asked.expires else None
        check_limits(asked.rate, asked.burst)
    except KeyProblem as exc:
        print(f"mesh keys {action}: {exc}", file=sys.stderr)
        return 2
    store = KeyStore.open(config)
    try:
        if action == "create":
            assert name is not None
            record, key = store.create(name, asked.rate, asked.burst, scopes, expire_time)
            print(key)
            what = f"scopes {', '.join(sorted(record.scopes))}" if record.scopes else "the public API only"
            print(f"created API key {record.name!r} ({what}); it is shown only this once", file=sys.stderr)
        elif action == "revoke":
            assert name is not None
            record = store.revoke(name)
            print(f"revoked API key {record.name!r}")
        else:
            listed = store.list()
            if asked.as_json:
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
        "scopes": sorted(key.scopes),
        "expire_time": _iso(key.expire_time) if key.expire_time else None,
        "last_used_time": _iso(key.last_used_time) if key.last_used_time else None,
    }


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def _table(listed: list[ApiKey]) -> str:
    rows = [("NAME", "PREFIX", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "STATUS", "RATE")]
    now = time.time_ns()
    for key in listed:
        rate = f"{key.requests_per_second:g}/s burst {key.burst}" if key.requests_per_second else "default"
        status = "revoked" if not key.active else "expired" if key.expired(now) else "active"
        rows.append(
            (
                key.name,
                key.shown_prefix + "…",
                ",".join(sorted(key.scopes)) or "-",
                _iso(key.create_time),
                _iso(key.expire_time) if key.expire_time else "never",
                _iso(key.last_used_time) if key.last_used_time else "never",
                status,
                rate,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
