"""`mesh status`: every member of the mesh file, how it answers now, and what `mesh up` knows of it.

Health comes from the members themselves (the gRPC health service, the
gateway's `GET /healthz`), asked all at once. Pids, restarts and last exits
come from `<data_dir>/mesh.json`, which a running `mesh up` keeps current and
removes when it stops; a file left by a supervisor that died is ignored.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from services.runtime.config import MeshConfig
from services.runtime.replicas import replicas_of

from .health import DOWN, GATEWAY, probe


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


# -- <data_dir>/mesh.json ------------------------------------------------------------------------------

_RECORDED = [f for f in fields(Member) if f.name != "health"]
"""What the state file keeps of a member (its health is asked afresh)."""


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
    answers = asyncio.run(_probe_all(config, members))
    running = _running(config)
    for member, answer in zip(members, answers, strict=True):
        member.health = answer
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


async def _probe_all(config: MeshConfig, members: Sequence[Member]) -> list[str]:
    return list(await asyncio.gather(*(probe(config, m.service, m.address) for m in members)))


def format_table(members: Sequence[Member]) -> str:
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
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _last_exit(member: Member) -> str:
    if member.last_exit is None:
        return "-"
    when = member.last_exit_at or ""
    return f"{member.last_exit} at {when[11:19]}" if len(when) >= 19 else member.last_exit


def status_json(members: Sequence[Member]) -> str:
    return json.dumps([asdict(m) for m in members], indent=2)
