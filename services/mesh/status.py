"""`mesh status`: every member of the mesh file, how it answers now, and what `mesh up` knows of it.

Health comes from the members themselves (the gRPC health service, the
gateway's `GET /healthz`), asked all at once. Pids, restarts and last exits
come from `<data_dir>/mesh.json`, which a running `mesh up` keeps current and
removes when it stops; a file left by a supervisor that died is ignored.

Each service's storage is shown as operators name it (its SQLite file, or
`host:port/database`, never a password) with whether it can be reached from
here, asked at the same time: a `SELECT 1` on a new PostgreSQL connection, or
opening the file read-only. That is this host's view; the service's own is its
health (NOT_SERVING while it cannot reach its database, runtime/readiness.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from services.runtime.config import MeshConfig, ServiceConfig
from services.runtime.replicas import replicas_of
from services.runtime.storage import sqlite_path

from .health import DOWN, GATEWAY, probe
from .migrate import database_of, migrations_dir

REACHABLE = "reachable"
STORAGE_TIMEOUT = 2.0
"""How long reaching a database may take (a new PostgreSQL connection forks a server process)."""


@dataclass
class Member:
    """One process of the mesh, as `mesh status` reports it."""

    service: str
    address: str
    pid: int | None
    health: str
    replica: int = 0
    """Which of the service's replicas (replicas.py); 0 for a single one."""
    restarts: int = 0
    """How many times `mesh up` started it again after it exited on its own."""
    last_exit: str | None = None
    """How its last process ended while the mesh ran ("killed by SIGKILL"); None if none did."""
    last_exit_at: str | None = None
    """When that was, as local ISO 8601 time."""
    storage: str | None = None
    """Where its data lives: its SQLite file or `host:port/database`; None if it keeps none."""
    storage_health: str | None = None
    """`reachable`, or why this host cannot reach it."""


# -- <data_dir>/mesh.json ------------------------------------------------------------------------------

_RECORDED = [f for f in fields(Member) if f.name not in ("health", "storage", "storage_health")]
"""What the state file keeps of a member (its health and its storage are asked afresh)."""


def state_file(config: MeshConfig) -> Path:
    return config.data_dir / "mesh.json"


def write_state(config: MeshConfig, members: Sequence[Member]) -> None:
    """Describe the mesh this process supervises (written whole, then renamed: readers never see half)."""
    path = state_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "supervisor_pid": os.getpid(),
        "config": str(config.source.resolve()),
        "members": [{f.name: getattr(m, f.name) for f in _RECORDED} for m in members],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def remove_state(config: MeshConfig) -> None:
    """Remove the description, if this process wrote it (another `mesh up` may have started since)."""
    path = state_file(config)
    try:
        if json.loads(path.read_text()).get("supervisor_pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _running(config: MeshConfig) -> dict[tuple[str, int], dict[str, Any]]:
    """The members in the state file of a supervisor that still runs, by (service, replica)."""
    try:
        state = json.loads(state_file(config).read_text())
        if not _alive(state.get("supervisor_pid")):
            return {}
        return {(m["service"], m.get("replica", 0)): m for m in state.get("members", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- mesh status ---------------------------------------------------------------------------------------


def status(config: MeshConfig) -> list[Member]:
    """Every member of the mesh file as it answers now (with its restarts, if a supervisor runs it)."""
    members = [
        Member(r.service.name, r.address, None, DOWN, r.index) for r in replicas_of(config.services.values())
    ]
    if config.gateway.enabled:
        members.append(Member(GATEWAY, config.gateway.address, None, DOWN))
    answers, storages = asyncio.run(_probe_all(config, members))
    running = _running(config)
    for member, answer in zip(members, answers, strict=True):
        member.health = answer
        member.storage, member.storage_health = storages.get(member.service, (None, None))
        found = running.get((member.service, member.replica))
        if found is not None:
            pid, restarts, exit_, when = (
                found.get(k) for k in ("pid", "restarts", "last_exit", "last_exit_at")
            )
            member.pid = pid if _alive(pid) else None
            member.restarts = restarts if isinstance(restarts, int) else 0
            member.last_exit = exit_ if isinstance(exit_, str) else None
            member.last_exit_at = when if isinstance(when, str) else None
    return members


async def _probe_all(
    config: MeshConfig, members: Sequence[Member]
) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Every member's health, and each service's storage with whether it is reachable, asked at once."""
    keeping = [s for s in config.services.values() if migrations_dir(s) is not None]
    answers = await asyncio.gather(
        asyncio.gather(*(probe(config, m.service, m.address) for m in members)),
        asyncio.gather(*(storage_health(config, s) for s in keeping)),
    )
    health, reached = answers
    return list(health), {
        s.name: (database_of(config, s), problem) for s, problem in zip(keeping, reached, strict=True)
    }


async def storage_health(config: MeshConfig, service: ServiceConfig) -> str:
    """`reachable`, or why the service's database cannot be reached from here (never its password)."""
    if service.storage.backend == "sqlite":
        return await asyncio.to_thread(_sqlite_health, config, service)
    dsn = service.storage.dsn_for(service.name)
    try:
        async with asyncio.timeout(STORAGE_TIMEOUT):
            connection = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            async with connection:
                await connection.execute("SELECT 1")
    except TimeoutError:
        return f"no answer within {STORAGE_TIMEOUT:g} s"
    except psycopg.Error as error:
        problem = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        password = str(conninfo_to_dict(dsn).get("password") or "")
        return problem.replace(password, "***") if password else problem
    return REACHABLE


def _sqlite_health(config: MeshConfig, service: ServiceConfig) -> str:
    path = sqlite_path(config, service).resolve()
    if not path.exists():
        return "no file yet (the service makes it when it starts)"
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=1.0)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as error:
        return str(error)
    return REACHABLE


def format_table(members: Sequence[Member]) -> str:
    """The members, then each service's storage once (if any member says where it is)."""
    replicated = {m.service for m in members if m.replica}
    rows = [("SERVICE", "ADDRESS", "PID", "HEALTH", "RESTARTS", "LAST EXIT")]
    rows += [
        (
            f"{m.service}-{m.replica}" if m.service in replicated else m.service,
            m.address,
            str(m.pid or "-"),
            m.health,
            str(m.restarts),
            _last_exit(m),
        )
        for m in members
    ]
    storages = {m.service: (m.storage, m.storage_health or "-") for m in members if m.storage}
    if not storages:
        return _table(rows)
    kept = [("SERVICE", "STORAGE", "STORAGE HEALTH")]
    kept += [(name, where, health) for name, (where, health) in storages.items()]
    return _table(rows) + "\n\n" + _table(kept)


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _last_exit(member: Member) -> str:
    if member.last_exit is None:
        return "-"
    when = member.last_exit_at or ""
    return f"{member.last_exit} at {when[11:19]}" if len(when) >= 19 else member.last_exit


def status_json(members: Sequence[Member]) -> str:
    return json.dumps([asdict(m) for m in members], indent=2)
