"""Wires the notification service into the mesh runtime.

Settings, `[services.notifications.settings]`: `stream_queue_size` (default
256), how many notifications an open stream may fall behind before it is
ended with RESOURCE_EXHAUSTED; `stream_poll_interval` (seconds, default 0.1),
how soon a stream sees what another replica committed (feed.py; SQLite only:
on PostgreSQL replicas tell each other with NOTIFY).
"""

from __future__ import annotations

from rideshare.notifications.v1 import notifications_pb2, notifications_pb2_grpc

from services.runtime import Runtime, Service
from services.runtime.errors import ConfigError

from .broker import DEFAULT_QUEUE_SIZE, Broker
from .feed import DEFAULT_POLL_INTERVAL, Feed
from .servicer import NotificationServicer
from .store import MIGRATIONS, NotificationStore


def create(runtime: Runtime) -> Service:
    queue_size = runtime.service.setting("stream_queue_size", int, DEFAULT_QUEUE_SIZE)
    if queue_size < 1:
        raise ConfigError(
            runtime.service.source,
            f"services.{runtime.service.name}.settings.stream_queue_size",
            f"expected an integer of at least 1, got {queue_size}",
        )
    poll_interval = runtime.service.setting("stream_poll_interval", float, DEFAULT_POLL_INTERVAL)
    if not 0 < poll_interval <= 60:
        raise ConfigError(
            runtime.service.source,
            f"services.{runtime.service.name}.settings.stream_poll_interval",
            f"expected seconds between 0 and 60, got {poll_interval}",
        )
    store = NotificationStore(runtime.backend(MIGRATIONS))
    feed = Feed(Broker(queue_size), store, poll_interval)
    return Service(
        descriptor=notifications_pb2.DESCRIPTOR.services_by_name["NotificationService"],
        servicer=NotificationServicer(store, feed),
        register=notifications_pb2_grpc.add_NotificationServiceServicer_to_server,
        on_stopping=feed.close,
    )
