"""Delivering the notification outbox: at least once, in order, however long the notification service is away.

A trip step writes its notifications to the `outbox` table in the same
transaction as the step (`store.transition`), so a step never fails, and no
notification is lost or invented, because of the notification service. This
loop sends the pending rows oldest first, each with `request_id = <outbox
id>`: a row re-sent after a lost answer or a crash is stored once by the
notification service (AIP-155), which makes "at least once" exactly once for
the recipient.

- Delivered rows are deleted.
- A failure that may pass (UNAVAILABLE, DEADLINE_EXCEEDED, ...) stops the
  pass, so later rows wait behind earlier ones, and the loop backs off
  exponentially (`initial_backoff` doubling up to `max_backoff`).
- A refusal that will never pass (INVALID_ARGUMENT, ...) marks the row dead:
  kept with its error for an operator, logged, never retried.
- A step wakes the loop at once (`wake()`); it also polls every
  `idle_poll` seconds, so rows left by a previous process are sent after a
  restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc

from services.runtime import log
from services.runtime.tracing import continued

from .background import Background
from .notices import Notice
from .store import OutboxEntry

_log = log.get_logger("rideshare.trips.outbox")

#: Codes that say the notification will never be accepted as it is.
PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)

Send = Callable[[Notice, str], Awaitable[object]]


class OutboxStore(Protocol):
    def pending_notices(self, limit: int) -> list[OutboxEntry]: ...
    def notice_delivered(self, entry_id: str) -> None: ...
    def notice_failed(self, entry_id: str, error: str, *, dead: bool) -> None: ...


class Outbox:
    """The delivery loop over a store's outbox."""

    def __init__(
        self,
        store: OutboxStore,
        send: Send,
        *,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        idle_poll: float = 5.0,
        batch: int = 100,
    ) -> None:
        self.store = store
        self.send = send
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.idle_poll = idle_poll
        self.batch = batch
        self._wake = asyncio.Event()
        self.task = Background("trips-outbox", self._run)

    def wake(self) -> None:
        """New rows were committed: deliver them now (starting the loop if it is not running)."""
        self._wake.set()
        self.task.try_start()

    async def deliver_pending(self) -> tuple[int, bool]:
        """One pass: (how many were delivered, whether it stopped on a failure that may pass)."""
        delivered = 0
        for entry in self.store.pending_notices(self.batch):
            try:
                with continued(entry.traceparent):  # the delivery joins the trace of the step
                    await self.send(entry.notice, entry.id)
            except grpc.aio.AioRpcError as error:
                text = f"{error.code().name}: {error.details()}"
                permanent = error.code() in PERMANENT
                self.store.notice_failed(entry.id, text, dead=permanent)
                if permanent:
                    _log.error(
                        "notification refused for good; kept in the outbox as dead",
                        extra={"fields": {"outbox_id": entry.id, "error": text, "trip": entry.notice.trip}},
                    )
                    continue
                _log.warning(
                    "notification service unreachable; will retry",
                    extra={"fields": {"outbox_id": entry.id, "error": text, "attempts": entry.attempts + 1}},
                )
                return delivered, True
            self.store.notice_delivered(entry.id)
            delivered += 1
        return delivered, False

    async def _run(self) -> None:
        backoff = self.initial_backoff
        while True:
            self._wake.clear()
            delivered, failed = await self.deliver_pending()
            if failed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = self.initial_backoff
            if delivered >= self.batch:
                continue
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns instead of raising when
            # the task is cancelled as the wake-up arrives, and stop() then waited for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.idle_poll):
                    await self._wake.wait()

    def start(self) -> None:
        self.task.start()

    async def stop(self) -> None:
        await self.task.stop()
