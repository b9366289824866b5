"""Readiness follows the database: NOT_SERVING while a service cannot reach it, SERVING when it can again.

A service whose database is out of reach can answer nothing but UNAVAILABLE,
so it says so on the standard health service (every service name it serves
and the overall `""`), which is what balancing clients watch
(`healthCheckConfig`, traffic.py): they send its calls to another replica
within milliseconds, and `mesh status` shows it.

How it knows: every `[storage] health_interval` (1 s) it asks each database
that can go away (`Backend.ping`: PostgreSQL's `SELECT 1` on a connection of
its own, so a pool busy with calls does not count as an outage), and at once
when a call found the database out of reach (`Backend.trouble`), so an outage
that traffic meets is seen without waiting for the next tick. While NOT_SERVING
it asks once per interval, not per failed call. An SQLite file is never out of
reach: a service on SQLite alone runs no task here.

A stopping server's NOT_SERVING wins: the health servicer ignores changes
once graceful shutdown began, and the server stops this task first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from grpc_health.v1 import health_pb2

from . import log
from .drain import WatchedHealth
from .errors import Unavailable
from .resources import Backend

_log = log.get_logger("rideshare.server")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness:
    """Follows `backends` and sets `names` (and `""`) on `health` to match: one task per server."""

    def __init__(
        self, health: WatchedHealth, names: Sequence[str], backends: Sequence[Backend], interval: float
    ):
        self.health = health
        self.names = [*names, ""]
        self.backends = [b for b in backends if b.trouble is not None]
        self.interval = interval
        self.reachable = True
        """What the last look found (the server starts SERVING with its databases open)."""
        self._missing: list[str] = []
        """The databases out of reach, as errors name them."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.backends and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow(), name="readiness")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def _follow(self) -> None:
        while True:
            await self._next_look()
            try:
                problems = [problem for b in self.backends if (problem := await _problem(b)) is not None]
                if (not problems) != self.reachable:
                    await self._set(problems)
            except Exception:  # a bug in one look must not end following for the life of the process
                _log.exception("readiness: looking at the database failed")

    async def _next_look(self) -> None:
        """Wait one interval, or less if reachable and a call meets the database out of reach."""
        troubles = [b.trouble for b in self.backends if b.trouble is not None]
        if self.reachable:
            waiting = [asyncio.ensure_future(t.wait()) for t in troubles]
            try:
                await asyncio.wait(waiting, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiting:
                    waiter.cancel()
        else:
            await asyncio.sleep(self.interval)
        for trouble in troubles:
            trouble.clear()

    async def _set(self, problems: Sequence[Unavailable]) -> None:
        self.reachable = not problems
        status = SERVING if self.reachable else NOT_SERVING
        for name in self.names:
            await self.health.set(name, status)
        for problem in problems:
            _log.warning(
                f"{problem.message}; NOT_SERVING until it is back",
                extra={"fields": {"event": "storage_unreachable", **problem.metadata}},
            )
        for database in [] if problems else self._missing:
            _log.info(
                f"database {database} is reachable again; SERVING",
                extra={"fields": {"event": "storage_reachable", "database": database}},
            )
        self._missing = [p.metadata.get("database", "") for p in problems]


async def _problem(backend: Backend) -> Unavailable | None:
    try:
        await backend.ping()
    except Unavailable as problem:
        return problem
    return None
