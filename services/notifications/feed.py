"""Every committed notification, from any replica, to this process's open streams, in commit order.

Replicas of the service share one database, and each has its own broker
(broker.py) for its own streams. The feed is what makes them one service:
while this process has a subscriber it follows the notifications table by
its sequence number (`seq`, assigned in commit order: SQLite has one writer
at a time) and hands each row to the broker exactly once, in order.

- A notification this process just committed is published at once when it
  is the next in sequence (always so with one replica): no read, no added
  latency.
- Otherwise (another replica committed in between) the feed reads what it
  has not seen, in order, right away; rows other replicas commit are read
  within `poll_interval` (default 0.1 s: a read of the primary key index,
  only while someone is subscribed).
- The position starts at the newest row when the first stream subscribes,
  so a stream gets what is committed after it opened, as before.
"""

from __future__ import annotations

import asyncio
import contextlib

from rideshare.notifications.v1.notifications_pb2 import Notification

from services.runtime import log

from .broker import Broker, Subscription
from .store import NotificationStore

DEFAULT_POLL_INTERVAL = 0.1
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

    def subscribe(self, recipient: str) -> Subscription:
        """A new subscription (broker.subscribe); the first one starts following the table."""
        subscription = self.broker.subscribe(recipient)
        if self.position is None:
            # No await between registering and reading the position: nothing committed after
            # this read can be missed, and what was committed before is not this stream's.
            self.position = self.store.last_seq()
            self._task = asyncio.get_running_loop().create_task(self._follow())
        return subscription

    def committed(self, seq: int, notification: Notification) -> None:
        """This process committed `notification` as row `seq` (call it with no await since)."""
        if self.position is None:
            return  # nobody is subscribed here
        if seq == self.position + 1:
            self.broker.publish(notification)  # the next one: no need to read it back
            self.position = seq
        else:
            self._wake.set()  # others committed in between: read them all, in order, now

    def _catch_up(self) -> int:
        """Hand every row after the position to the broker, in order; how many there were."""
        assert self.position is not None
        delivered = 0
        while True:
            rows = self.store.since(self.position, _BATCH)
            for seq, notification in rows:
                self.broker.publish(notification)
                self.position = seq
            delivered += len(rows)
            if len(rows) < _BATCH:
                return delivered

    async def _follow(self) -> None:
        try:
            while self.broker.subscriber_count() and not self.broker.closed:
                with contextlib.suppress(TimeoutError):  # asyncio.timeout: see trips/outbox.py
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()
                self._wake.clear()
                self._catch_up()
        except Exception as exc:  # a database error: end the streams rather than leave them silent
            _log.error("following the notifications table failed", exc_info=exc)
            self.broker.close()
        finally:
            self.position = None
            self._task = None

    def close(self) -> None:
        """End every stream (UNAVAILABLE) and stop following."""
        self.broker.close()
        if self._task is not None:
            self._task.cancel()
