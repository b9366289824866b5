"""Two notification replicas under `mesh up` are one service: a stream on either sees every notification,
on one SQLite file (polled) or one PostgreSQL database (LISTEN/NOTIFY)."""

from __future__ import annotations

from typing import Any

import grpc
from rideshare.notifications.v1 import notifications_pb2 as pb
from rideshare.notifications.v1 import notifications_pb2_grpc

from .conftest import MeshFactory

SERVICE = "rideshare.notifications.v1.NotificationService"


def test_a_stream_on_one_replica_gets_what_the_other_one_stores_in_order(
    mesh_factory: MeshFactory, storage: dict[str, Any], grpcurl
):
    mesh = mesh_factory({"notifications": {"replicas": 2}}, **storage).start()
    _, members = mesh.status()
    first, second = sorted(
        (m for m in members if m["service"] == "notifications"), key=lambda m: int(m["replica"])
    )

    with grpc.insecure_channel(str(first["address"])) as channel:
        stub = notifications_pb2_grpc.NotificationServiceStub(channel)
        stream = stub.StreamNotifications(pb.StreamNotificationsRequest(parent="passengers/p1"), timeout=60)
        stream.initial_metadata()  # subscribed: nothing sent from now on can be missed
        titles = [f"note {n}" for n in range(5)]
        for n, title in enumerate(titles):
            replica = second if n % 2 == 0 else first  # mostly the other replica, some its own
            grpcurl.json(
                str(replica["address"]),
                f"{SERVICE}/SendNotification",
                {"notification": {"recipient": "passengers/p1", "title": title, "body": "b"}},
            )
        received = [next(stream).title for _ in titles]
        stream.cancel()

    assert received == titles
