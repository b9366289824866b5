"""Every committed notification, from any replica, to this process's open streams, in commit order.

Replicas of the service share one database, and each has its own broker
(broker.py) for its own streams. The feed is what makes them one service:
while this process has a subscriber it follows the notifications table by
its sequence number (`seq`, assigned in commit order: store.py) and hands
each row to the broker exactly once, in order. One design for both engines;
what differs is how it learns that another replica stored something:

- A notification this process just committed is published at once when it
  is the next in sequence (always so with one replica): no read, no added
  latency.
- Otherwise (another replica committed in between) the feed reads what it
  has not seen, in order, right away.
- PostgreSQL: each storing transaction NOTIFYs its last `seq` on commit, and the
  feed LISTENs on a connection of its own (`Backend.listen`) while anyone is
  subscribed; a `seq` past its position wakes it to read. When that
  connection drops it reconnects and reads everything after its position,
  so nothing committed meanwhile is lost; one it has already is skipped.
- SQLite (replicas on one host): rows other replicas commit are read within
  `poll_interval` (default 0.1 s: a read of the primary key index, only
  while someone is subscribed).
- The position starts at the newest row when the first stream subscribes,
  so a stream gets what is committed after it opened, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from rideshare.notifications.v1.notifications_pb2 import Notification

from services.runtime import log
from services.runtime.errors import MeshError, Unavailable

from .broker import Broker, Subscription
from .store import CHANNEL, NotificationStore

DEFAULT_POLL_INTERVAL = 0.1
IDLE_CHECK = 1.0
"""With notifications (PostgreSQL), how often the feed looks whether anyone is still subscribed."""
_BATCH = 256

_log = log.get_logger("rideshare.notifications")


class Feed:
    """Follows the notifications table for the broker's subscribers."""

    def __init__(
        self, broker: Broker, store: NotificationStore, poll_interval: float = DEFAULT_POLL_INTERVAL
    ) -> None:
        self.broker = broker
        self.store = store
        self.poll_interval = poll_interval
        self.position: int | None = None
        """The `seq` of the last row handed to the broker; None while nobody is subscribed."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def subscribe(self, recipient: str) -> Subscription:
        """A new subscription (broker.subscribe); the first one starts following the table.

        The position is read before the subscription is registered: whatever commits after
        the read has a later `seq`, so it reaches the stream, by `committed` or by a read.
        """
        if self.position is None:
            position = await self.store.last_seq()
            if self.position is None:  # no other subscriber started following meanwhile
                self.position = position
                self._task = asyncio.get_running_loop().create_task(self._follow())
        return self.broker.subscribe(recipient)

    def committed(self, seq: int, notification: Notification) -> None:
        """This process committed `notification` as row `seq` (call it with no await since)."""
        if self.position is None:
            return  # nobody is subscribed here
        if seq == self.position + 1:
            self.broker.publish(notification)  # the next one: no need to read it back
            self.position = seq
        else:
            self._wake.set()  # others committed in between: read them all, in order, now

    async def _catch_up(self) -> int:
        """Hand every row after the position to the broker, in order; how many there were."""
        assert self.position is not None
        delivered = 0
        while True:
            rows = await self.store.since(self.position, _BATCH)
            for seq, notification in rows:
                if seq <= self.position:
                    continue  # published by `committed` while this read was awaited
                self.broker.publish(notification)
                self.position = seq
            delivered += len(rows)
            if len(rows) < _BATCH:
                return delivered

    async def _follow(self) -> None:
        changes = self.store.db.listen(CHANNEL)
        listening = None if changes is None else asyncio.get_running_loop().create_task(self._listen(changes))
        try:
            while self.broker.subscriber_count() and not self.broker.closed:
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout, not wait_for: on 3.11 wait_for may lose a cancel
                    async with asyncio.timeout(self.poll_interval if listening is None else IDLE_CHECK):
                        await self._wake.wait()
                if self._wake.is_set() or listening is None:
                    self._wake.clear()
                    await self._catch_up()
        except Exception as exc:  # a database error: end the streams rather than leave them silent
            _log.error("following the notifications table failed", exc_info=exc)
            self.broker.end_all(
                exc
                if isinstance(exc, MeshError)
                else Unavailable("the notification feed failed; reconnect, and list to catch up")
            )
        finally:
            self.position = None
            self._task = None
            if listening is not None:
                listening.cancel()
                await asyncio.wait({listening})

    async def _listen(self, changes: AsyncGenerator[str | None, None]) -> None:
        """Wake the follower for every `seq` past the position, and on every (re)connection."""
        async with contextlib.aclosing(changes):
            async for payload in changes:
                if self.position is None:
                    return  # following ended
                if payload is None or not payload.isdigit() or int(payload) > self.position:
                    self._wake.set()

    async def close(self) -> None:
        """End every stream (UNAVAILABLE) and stop following."""
        self.broker.close()
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
