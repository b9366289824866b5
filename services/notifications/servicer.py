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

from services.runtime import aip

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
        notification, seq = self.store.create(domain.new_notification(request.notification), request)
        if seq is not None:
            # Committed by now, and nothing awaited since: streams see notifications in commit order.
            self.feed.committed(seq, notification)
        return notification

    async def ListNotifications(
        self, request: ListNotificationsRequest, context: Context
    ) -> ListNotificationsResponse:
        query = {"parent": request.parent}
        after = aip.decode_page_token(request.page_token, query, kind=int) or 0
        notifications, last = self.store.list(request.parent, after, aip.page_size(request.page_size))
        return ListNotificationsResponse(
            notifications=notifications,
            next_page_token=aip.encode_page_token(last, query) if last is not None else "",
        )

    async def StreamNotifications(
        self, request: StreamNotificationsRequest, context: Context
    ) -> AsyncIterator[Notification]:
        """Response headers are sent once subscribed: a client that has them will miss nothing sent after."""
        with self.feed.subscribe(request.parent) as subscription:
            await context.send_initial_metadata(())
            async for notification in subscription:
                yield notification
