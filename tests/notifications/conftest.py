"""A running notification service on a free port, with helpers to send, list and stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from rideshare.notifications.v1 import notifications_pb2 as pb
from rideshare.notifications.v1 import notifications_pb2_grpc

from services.notifications.broker import Broker
from tests.conftest import MESH_TOML, Running, ServeFactory, write_mesh_file

#: Small enough that a test can overflow a stream by hand.
QUEUE_SIZE = 4
MESH = (
    MESH_TOML + f"\n[services.notifications]\nport = 0\nsettings = {{ stream_queue_size = {QUEUE_SIZE} }}\n"
)


@pytest.fixture
def mesh_file(tmp_path: Path) -> Path:
    return write_mesh_file(tmp_path, MESH)


class Notifications:
    """The running service and shorthands for its RPCs."""

    def __init__(self, serve: ServeFactory) -> None:
        self._serve = serve
        self.running = self._start()

    def _start(self) -> Running:
        running = self._serve("notifications")
        running.stub = notifications_pb2_grpc.NotificationServiceStub(running.channel)
        return running

    def restart(self) -> None:
        self.running.stop()
        self.running = self._start()

    @property
    def stub(self) -> notifications_pb2_grpc.NotificationServiceStub:
        return self.running.stub

    @property
    def broker(self) -> Broker:
        broker: Broker = self.running.server.services[0].servicer.broker
        return broker

    def call(self, awaitable):
        return self.running.call(awaitable)

    def fail(self, awaitable):
        return self.running.fail(awaitable)

    def send(
        self, recipient: str, title: str = "Your driver is on the way", request_id: str = "", **fields
    ) -> pb.Notification:
        values = {"recipient": recipient, "title": title, "body": "Dee arrives in 4 minutes."}
        values.update(fields)
        request = pb.SendNotificationRequest(notification=pb.Notification(**values), request_id=request_id)
        return self.call(self.stub.SendNotification(request))

    def list(self, parent: str, page_size: int = 0, page_token: str = "") -> pb.ListNotificationsResponse:
        request = pb.ListNotificationsRequest(parent=parent, page_size=page_size, page_token=page_token)
        return self.call(self.stub.ListNotifications(request))

    def subscribe(self, parent: str):
        """An open stream; once it returns, every notification sent to `parent` reaches it."""

        async def open_stream():
            call = self.stub.StreamNotifications(pb.StreamNotificationsRequest(parent=parent))
            await call.initial_metadata()
            return call

        return self.call(open_stream())

    def read(self, call) -> pb.Notification:
        message = self.call(call.read())
        assert message is not grpc.aio.EOF
        return message

    def wait_until_unsubscribed(self, parent: str) -> None:
        """Wait (bounded by the test timeout) until the server has dropped every stream of `parent`."""

        async def settle():
            # The server learns of a cancel from the transport; there is no event to await.
            while self.broker.subscriber_count(parent):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        self.call(settle())


@pytest.fixture
def notifications(serve: ServeFactory) -> Notifications:
    return Notifications(serve)
