"""StreamNotifications over REST: the real notification service behind the gateway, NDJSON and SSE,
on each storage engine (the feed polls a SQLite file, or LISTENs on PostgreSQL)."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import json_format
from rideshare.notifications.v1 import notifications_pb2, notifications_pb2_grpc

from services.gateway.server import Options
from services.runtime.config import load_config
from services.runtime.server import MeshServer
from tests import postgres

from ..conftest import with_port
from . import harness

SERVICES = "[services.passengers]\nport = 0\n\n[services.notifications]\nport = 0\n"


@dataclass
class Stack:
    gateway: harness.RunningGateway
    backend: MeshServer
    background: harness.BackgroundLoop
    port: int
    """The notification service's, for what only services may call."""

    def subscribers(self, recipient: str) -> int:
        broker = self.backend.services[0].servicer.broker  # type: ignore[attr-defined]
        count: int = broker.subscriber_count(recipient)
        return count

    def wait_for_subscribers(self, recipient: str, count: int) -> None:
        """Wait (bounded by the harness) until `recipient` has exactly `count` open streams."""

        async def poll() -> None:
            while self.subscribers(recipient) != count:  # noqa: ASYNC110 - the broker has no event to await
                await asyncio.sleep(0.01)

        self.background.run(poll())


@pytest.fixture(scope="module", params=postgres.ENGINES)
def stack(
    request: pytest.FixtureRequest,
    background: harness.BackgroundLoop,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    services = SERVICES
    if request.param == "postgres":
        databases: postgres.Databases = request.getfixturevalue("postgres_databases")
        databases.create("notifications")  # what `mesh migrate` does; a service never creates its own
        services += f'\n[storage]\nbackend = "postgres"\ndsn = "{databases.per_service()}"\n'
    config = load_config(harness.write_gateway_mesh(tmp_path_factory.mktemp("mesh"), services), env={})
    from services.runtime.server import create_server

    backend = background.run(create_server(config, "notifications", port=0))
    port = background.run(backend.start())
    running = background.run(
        harness.start_gateway(with_port(config, "notifications", port), Options(auth=False))
    )
    yield Stack(running, backend, background, port)
    background.run(running.stop())
    background.run(backend.stop(0))


def open_stream(port: int, recipient: str, headers: dict[str, str] | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=harness.WAIT)
    connection.request("GET", f"/v1/{recipient}/notifications:stream", headers=headers or {})
    return connection, connection.getresponse()


def send(stack: Stack, recipient: str, title: str) -> dict:
    """Send as the trip service does, over gRPC (SendNotification is internal: not on the REST API)."""

    async def call() -> notifications_pb2.Notification:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.port}") as channel:
            stub = notifications_pb2_grpc.NotificationServiceStub(channel)
            notification = notifications_pb2.Notification(
                recipient=recipient, title=title, body="On its way."
            )
            return await stub.SendNotification(
                notifications_pb2.SendNotificationRequest(notification=notification), timeout=harness.WAIT
            )

    sent = stack.background.run(call())
    return json_format.MessageToDict(
        sent, always_print_fields_with_no_presence=True
    )  # as the gateway writes it


def test_sending_a_notification_is_not_on_the_rest_api(stack):
    response = stack.gateway.request(
        "POST", "/v1/passengers/p1/notifications", {"title": "Free rides", "body": "Click here."}
    )

    # Its path is ListNotifications' too, so the answer is what any unknown method on it gets.
    assert (response.status, response.headers["allow"]) == (405, "GET")


def test_notifications_stream_as_ndjson_and_a_disconnect_ends_the_upstream_stream(stack):
    connection, response = open_stream(stack.gateway.port, "passengers/p1")
    assert (response.status, response.headers["content-type"]) == (200, "application/x-ndjson")
    stack.wait_for_subscribers("passengers/p1", 1)

    sent = send(stack, "passengers/p1", "Driver assigned")
    line = json.loads(response.readline())
    assert line == {"result": sent}
    assert line["result"]["title"] == "Driver assigned"

    connection.sock.shutdown(2)
    connection.close()
    stack.wait_for_subscribers("passengers/p1", 0)
    assert stack.subscribers("passengers/p1") == 0


def test_notifications_stream_as_server_sent_events(stack):
    connection, response = open_stream(stack.gateway.port, "drivers/d1", {"accept": "text/event-stream"})
    try:
        assert response.headers["content-type"] == "text/event-stream"
        stack.wait_for_subscribers("drivers/d1", 1)
        sent = send(stack, "drivers/d1", "New trip")
        assert response.readline() == b"data: " + json.dumps(sent, separators=(",", ":")).encode() + b"\n"
        assert response.readline() == b"\n"
    finally:
        connection.close()
    stack.wait_for_subscribers("drivers/d1", 0)


def test_a_bad_recipient_is_a_plain_http_error_before_the_stream_starts(stack):
    response = stack.gateway.request("GET", "/v1/riders/x/notifications:stream")

    assert response.status == 404
