"""The NotificationService gRPC surface: decode, call the rules, the store and the broker, encode.

A recipient's notifications are its own: a signed-in passenger or driver lists
and streams only theirs, and is told any other recipient does not exist (so
no stream is ever held open for a recipient the caller does not own).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from rideshare.notifications.v1 import notifications_pb2_grpc
from rideshare.notifications.v1.notifications_pb2 import (
    BatchSendNotificationsRequest,
    BatchSendNotificationsResponse,
    ListNotificationsRequest,
    ListNotificationsResponse,
    Notification,
    SendNotificationRequest,
    StreamNotificationsRequest,
)

from services.runtime.errors import NotFound
from services.runtime.principal import require_owner

from . import domain
from .feed import Feed
from .store import NotificationStore

Context = grpc.aio.ServicerContext[Any, Any]


class NotificationServicer(notifications_pb2_grpc.NotificationServiceServicer):
    """Notifications: send, list, and stream them live."""

    def __init__(self, store: NotificationStore, feed: Feed) -> None:
        self.store = store
        self.feed = feed
        self.broker = feed.broker

    async def SendNotification(self, request: SendNotificationRequest, context: Context) -> Notification:
        notification, seq = await self.store.send(domain.new_notification(request.notification), request)
        if seq is not None:
            # Committed by now, and nothing awaited since: streams see notifications in commit order.
            self.feed.committed(seq, notification)
        return notification

    async def BatchSendNotifications(
        self, request: BatchSendNotificationsRequest, context: Context
    ) -> BatchSendNotificationsResponse:
        requests = list(request.requests)
        drafts = domain.new_batch([entry.notification for entry in requests])
        answers, stored = await self.store.send_batch(drafts, requests)
        for seq, notification in stored:  # committed, nothing awaited since: commit order, as one by one
            self.feed.committed(seq, notification)
        return BatchSendNotificationsResponse(notifications=answers)

    async def ListNotifications(
        self, request: ListNotificationsRequest, context: Context
    ) -> ListNotificationsResponse:
        _mine(request.parent)
        page = await self.store.list(request, parent=request.parent)
        return ListNotificationsResponse(notifications=page.items, next_page_token=page.next_page_token)

    async def StreamNotifications(
        self, request: StreamNotificationsRequest, context: Context
    ) -> AsyncIterator[Notification]:
        """Response headers are sent once subscribed: a client that has them will miss nothing sent after."""
        _mine(request.parent)
        with await self.feed.subscribe(request.parent) as subscription:
            await context.send_initial_metadata(())
            async for notification in subscription:
                yield notification


def _mine(recipient: str) -> None:
    """A passenger or driver reads and follows its own notifications only (operators anyone's)."""
    require_owner([recipient], lambda: recipient_not_found(recipient))


def recipient_not_found(recipient: str) -> NotFound:
    """What a signed-in user is told of anyone else's notifications, existing or not."""
    return NotFound(
        f"{recipient} does not exist", reason="RECIPIENT_NOT_FOUND", metadata={"parent": recipient}
    )
