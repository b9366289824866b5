"""SendNotification and ListNotifications over a real grpc.aio channel."""

from __future__ import annotations

import re

import grpc
import pytest
from rideshare.notifications.v1 import notifications_pb2 as pb

DOMAIN = "notifications.rideshare"
ADA = "passengers/ada"
DEE = "drivers/dee"


def test_send_names_the_notification_under_its_recipient(notifications):
    sent = notifications.send(ADA, title=" Receipt ", body="You paid 12.30 EUR.\nThanks!", trip="trips/t1")

    assert re.match(r"^passengers/ada/notifications/[0-9a-f]{32}$", sent.name)
    assert (sent.recipient, sent.title, sent.body, sent.trip) == (
        ADA,
        "Receipt",
        "You paid 12.30 EUR.\nThanks!",
        "trips/t1",
    )
    assert sent.create_time.seconds > 0
    assert notifications.list(ADA).notifications == [sent]


def test_drivers_receive_notifications_too(notifications):
    sent = notifications.send(DEE, name="passengers/x/notifications/mine", create_time={"seconds": 1})

    assert re.match(r"^drivers/dee/notifications/[0-9a-f]{32}$", sent.name)
    assert sent.create_time.seconds > 1
    assert sent.trip == ""


@pytest.mark.parametrize(
    ("notification", "fields"),
    [
        (None, ["notification"]),
        (pb.Notification(), ["notification.recipient", "notification.title", "notification.body"]),
        (pb.Notification(recipient="trips/t1", title="t", body="b"), ["notification.recipient"]),
        (pb.Notification(recipient="passengers/a/b", title="t", body="b"), ["notification.recipient"]),
        (pb.Notification(recipient=ADA, title="t", body="b", trip="passengers/a"), ["notification.trip"]),
        (pb.Notification(recipient=ADA, title="  ", body="\n"), ["notification.title", "notification.body"]),
        (
            pb.Notification(recipient=ADA, title="x" * 101, body="b" * 1001),
            ["notification.title", "notification.body"],
        ),
        (
            pb.Notification(recipient=ADA, title="a\nb", body="bell\a"),
            ["notification.title", "notification.body"],
        ),
    ],
)
def test_malformed_notifications_are_refused_naming_the_field(notifications, notification, fields):
    request = pb.SendNotificationRequest(notification=notification)

    failure = notifications.fail(notifications.stub.SendNotification(request))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == fields
    assert failure.info.domain == DOMAIN
    assert notifications.list(ADA).notifications == []


def test_the_longest_title_and_body_are_accepted(notifications):
    sent = notifications.send(ADA, title="x" * 100, body="y" * 1000)

    assert (len(sent.title), len(sent.body)) == (100, 1000)


def test_list_is_oldest_first_one_recipient_at_a_time_in_pages(notifications):
    names = []
    for i in range(5):
        names.append(notifications.send(ADA, title=f"n{i}").name)
        notifications.send(DEE, title=f"other {i}")

    pages, token = [], ""
    while True:
        response = notifications.list(ADA, page_size=2, page_token=token)
        pages.append([n.name for n in response.notifications])
        token = response.next_page_token
        if not token:
            break

    assert pages == [names[0:2], names[2:4], names[4:5]]
    assert [n.name for n in notifications.list(ADA).notifications] == names
    assert [n.title for n in notifications.list(DEE).notifications] == [f"other {i}" for i in range(5)]
    assert notifications.list("passengers/nobody").notifications == []
    assert notifications.list("passengers/nobody").next_page_token == ""


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"parent": "trips/t1"}, "parent"),
        ({"parent": ""}, "parent"),
        ({"parent": ADA, "page_size": -1}, "page_size"),
        ({"parent": ADA, "page_token": "forged"}, "page_token"),
    ],
)
def test_bad_list_requests_name_the_field(notifications, request_fields, field):
    failure = notifications.fail(
        notifications.stub.ListNotifications(pb.ListNotificationsRequest(**request_fields))
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == [field]


def test_a_page_token_only_continues_the_list_it_came_from(notifications):
    for _ in range(3):
        notifications.send(ADA)
    token = notifications.list(ADA, page_size=1).next_page_token

    failure = notifications.fail(
        notifications.stub.ListNotifications(pb.ListNotificationsRequest(parent=DEE, page_token=token))
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["page_token"]


def test_send_replayed_with_the_same_request_id_returns_the_first_notification(notifications):
    first = notifications.send(ADA, request_id="trip-t1-receipt")
    again = notifications.send(ADA, request_id="trip-t1-receipt")

    assert again == first
    assert notifications.list(ADA).notifications == [first]


def test_request_id_reused_for_a_different_notification_is_refused(notifications):
    notifications.send(ADA, request_id="n-1")

    failure = notifications.fail(
        notifications.stub.SendNotification(
            pb.SendNotificationRequest(
                notification=pb.Notification(recipient=ADA, title="Other", body="b"), request_id="n-1"
            )
        )
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "REQUEST_ID_REUSED"
    assert failure.fields == ["request_id"]
    assert len(notifications.list(ADA).notifications) == 1


def test_notifications_and_replays_survive_a_restart(notifications):
    first = notifications.send(ADA, request_id="n-1")
    second = notifications.send(ADA, title="Later")

    notifications.restart()

    assert notifications.list(ADA).notifications == [first, second]
    assert notifications.send(ADA, request_id="n-1") == first
    assert len(notifications.list(ADA).notifications) == 2
