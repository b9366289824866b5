"""Live delivery: an in-process fan-out from SendNotification to open streams.

Each open StreamNotifications is a `Subscription` with its own bounded
`asyncio.Queue`, registered under its recipient. `publish` is called after the
notification's transaction committed, on the event loop, and never waits: a
subscriber whose queue is full is ended with RESOURCE_EXHAUSTED (its backlog
dropped; it lists to catch up) rather than letting a slow client grow the
server's memory or hold up the sender. Closing the broker ends every stream
with UNAVAILABLE and refuses new ones, so a stopping server is not held for
its whole grace period by streams that would otherwise never end.

The broker only knows the streams of this process; `feed.py` hands it every
notification committed by any replica of the service, in commit order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

from rideshare.notifications.v1.notifications_pb2 import Notification

from services.runtime.errors import MeshError, ResourceExhausted, Unavailable

DEFAULT_QUEUE_SIZE = 256


@dataclass(frozen=True)
class _End:
    """Put on a queue to end its stream with `error`."""

    error: MeshError


class Subscription:
    """One open stream: the notifications for its recipient, in the order they were sent."""

    def __init__(self, broker: Broker, recipient: str, size: int) -> None:
        self.broker = broker
        self.recipient = recipient
        self.size = size
        # One slot beyond `size` is kept for the end marker, so ending never blocks or fails.
        self._queue: asyncio.Queue[Notification | _End] = asyncio.Queue(maxsize=size + 1)

    def offer(self, notification: Notification) -> bool:
        """Queue `notification`; False if the subscriber is `size` behind."""
        if self._queue.qsize() >= self.size:
            return False
        self._queue.put_nowait(notification)
        return True

    def end(self, error: MeshError, *, drop_backlog: bool = False) -> None:
        if drop_backlog:
            while not self._queue.empty():
                self._queue.get_nowait()
        self._queue.put_nowait(_End(error))

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.broker.unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[Notification]:
        return self

    async def __anext__(self) -> Notification:
        item = await self._queue.get()
        if isinstance(item, _End):
            raise item.error
        return item


class Broker:
    """Subscriptions by recipient; `publish` hands a committed notification to each."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.queue_size = queue_size
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._closed = False

    def subscribe(self, recipient: str) -> Subscription:
        """A new subscription; use it as a context manager so leaving the stream unsubscribes."""
        if self._closed:
            raise _shutting_down()
        subscription = Subscription(self, recipient, self.queue_size)
        self._subscriptions.setdefault(recipient, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscriptions = self._subscriptions.get(subscription.recipient)
        if subscriptions is None:
            return
        subscriptions.discard(subscription)
        if not subscriptions:
            del self._subscriptions[subscription.recipient]

    def publish(self, notification: Notification) -> None:
        """Deliver to every subscription of the recipient; end those that cannot keep up."""
        for subscription in list(self._subscriptions.get(notification.recipient, ())):
            if not subscription.offer(notification):
                self.unsubscribe(subscription)
                subscription.end(
                    ResourceExhausted(
                        f"the stream of {notification.recipient} fell {subscription.size} notifications "
                        "behind and was ended; reconnect, and list to catch up",
                        reason="STREAM_TOO_SLOW",
                        metadata={"recipient": notification.recipient, "queue_size": str(subscription.size)},
                    ),
                    drop_backlog=True,
                )

    @property
    def closed(self) -> bool:
        return self._closed

    def subscriber_count(self, recipient: str | None = None) -> int:
        """Open subscriptions, of one recipient or of all."""
        if recipient is not None:
            return len(self._subscriptions.get(recipient, ()))
        return sum(len(s) for s in self._subscriptions.values())

    def close(self) -> None:
        """End every stream with UNAVAILABLE (after what it has queued) and refuse new ones."""
        self._closed = True
        self.end_all(_shutting_down())

    def end_all(self, error: MeshError) -> None:
        """End every open stream with `error` (after what it has queued); new ones are welcome."""
        subscriptions = [s for group in self._subscriptions.values() for s in group]
        self._subscriptions.clear()
        for subscription in subscriptions:
            subscription.end(error)


def _shutting_down() -> Unavailable:
    return Unavailable(
        "the notification service is shutting down; reconnect, and list to catch up",
        reason="SERVER_SHUTTING_DOWN",
    )
