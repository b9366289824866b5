"""The NotificationService gRPC surface: decode, call the rules, the store and the broker, encode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from rideshare.notifications.v1 import notifications_pb2_grpc
from rideshare.notifications.v1.notifications_pb2 import (
    ListNotificationsRequest,
    ListNotificationsResponse,
    Notification,
    SendNotificationRequest,
    StreamNotificationsRequest,
)

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

    async def ListNotifications(
        self, request: ListNotificationsRequest, context: Context
    ) -> ListNotificationsResponse:
        page = await self.store.list(request, parent=request.parent)
        return ListNotificationsResponse(notifications=page.items, next_page_token=page.next_page_token)

    async def StreamNotifications(
        self, request: StreamNotificationsRequest, context: Context
    ) -> AsyncIterator[Notification]:
        """Response headers are sent once subscribed: a client that has them will miss nothing sent after."""
        with await self.feed.subscribe(request.parent) as subscription:
            await context.send_initial_metadata(())
            async for notification in subscription:
                yield notification
