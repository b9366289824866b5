"""Wires the notification service into the mesh runtime.

Setting: `[services.notifications.settings] stream_queue_size` (default 256),
how many notifications an open stream may fall behind before it is ended
with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from rideshare.notifications.v1 import notifications_pb2, notifications_pb2_grpc

from services.mesh import Runtime, Service
from services.mesh.errors import ConfigError
from services.mesh.storage import Database

from .broker import DEFAULT_QUEUE_SIZE, Broker
from .servicer import NotificationServicer
from .store import MIGRATIONS, SqliteNotificationStore


def create(runtime: Runtime) -> Service:
    queue_size = runtime.service.setting("stream_queue_size", int, DEFAULT_QUEUE_SIZE)
    if queue_size < 1:
        raise ConfigError(
            runtime.service.source,
            f"services.{runtime.service.name}.settings.stream_queue_size",
            f"expected an integer of at least 1, got {queue_size}",
        )
    broker = Broker(queue_size)
    store = SqliteNotificationStore(Database(runtime.data_path("notifications.db"), MIGRATIONS))
    return Service(
        descriptor=notifications_pb2.DESCRIPTOR.services_by_name["NotificationService"],
        servicer=NotificationServicer(store, broker),
        register=notifications_pb2_grpc.add_NotificationServiceServicer_to_server,
        on_stopping=broker.close,
        on_stop=store.close,
    )
