"""Long-running tasks of the trip service (the outbox, the janitor), started and stopped with the server.

A task is started with an empty `contextvars.Context`: started lazily from a
handler it would otherwise inherit that call's deadline and headers
(`calls.current_call`) and pass them to every call it ever makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import socket
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from services.runtime import log

_log = log.get_logger("rideshare.trips.background")
STOP_PATIENCE = 0.5
"""How long `stop` waits for a cancelled task before cancelling it again."""


def owner_name() -> str:
    """A name for what this process holds or claims in the shared database: host, pid, and a
    random part (two in one process, as in tests, are two owners)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Background:
    """One named loop; `start()` needs a running event loop, `stop()` cancels and waits."""

    def __init__(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self._run = run
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        """Start unless running (or stopped for good); safe to call from any handler."""
        if self._stopped or (self._task is not None and not self._task.done()):
            return
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._guarded(), name=self.name, context=contextvars.Context())

    def try_start(self) -> None:
        """`start()` if an event loop is running here, else later (the first call starts it)."""
        with contextlib.suppress(RuntimeError):
            self.start()

    async def _guarded(self) -> None:
        while True:
            try:
                await self._run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug in one pass must not end delivery for the life of the process.
                _log.exception(f"{self.name} failed; restarting it", extra={"fields": {"task": self.name}})
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        self._stopped = True
        task, self._task = self._task, None
        if task is None or task.done():
            return
        # asyncio.wait, not `await task` under suppress(CancelledError): that also swallowed
        # a cancel of the caller itself, so a bounded stop could never give up. Cancelled again
        # until it ends: on Python 3.11 asyncio.wait_for, which psycopg_pool awaits while a task
        # waits for a connection, drops a cancel that arrives with the connection (fixed in 3.12).
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_PATIENCE)
