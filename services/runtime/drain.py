"""Draining: a stopping server first sends its clients elsewhere, then stops.

Clients watch each replica's health (`healthCheckConfig`, traffic.py). When a
server is asked to stop it reports NOT_SERVING; every watching client stops picking
it within milliseconds (the health stream pushes the change). Only then does the
server refuse new calls (`server.stop(grace)`): without this step, calls already on
their way when the server shut down came back CANCELLED, which no client may retry.

The wait lasts `drain_period` (mesh.toml, default 500 ms) and is skipped when no
client watches this server's health: then nobody routes by it and waiting is no use.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from grpc_health.v1 import health

from . import log

_log = log.get_logger("rideshare.server")


class WatchedHealth(health.aio.HealthServicer):  # type: ignore[misc]  # untyped library
    """The library's health servicer, counting the clients that watch it (their `Watch` streams)."""

    def __init__(self) -> None:
        super().__init__()
        self.watchers = 0
        self._unwatched = asyncio.Event()
        self._unwatched.set()

    async def Watch(self, request: Any, context: Any) -> None:
        self.watchers += 1
        self._unwatched.clear()
        try:
            await super().Watch(request, context)
        finally:
            self.watchers -= 1
            if not self.watchers:
                self._unwatched.set()

    async def unwatched(self) -> None:
        """Return once no client watches any more."""
        await self._unwatched.wait()


async def drain(health: WatchedHealth, period: float) -> float:
    """Wait up to `period` seconds while any client still watches; returns how long it waited."""
    if period <= 0 or health.watchers == 0:
        return 0.0
    started = time.monotonic()
    _log.info(
        "draining: NOT_SERVING, waiting for clients to move away",
        extra={"fields": {"event": "draining", "drain_s": period, "watchers": health.watchers}},
    )
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(period):
            await health.unwatched()
    return time.monotonic() - started
