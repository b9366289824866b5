"""BatchSendNotifications (AIP-233): all or none, each entry replayed by its own request_id, every
stored notification delivered live; the store on both engines, the RPC over a real channel."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from rideshare.notifications.v1 import notifications_pb2 as pb

from services.notifications import domain
from services.runtime.errors import InvalidArgument
from tests.notifications.test_feed import WAIT, Replica, titles

ADA = "passengers/ada"
DEE = "drivers/dee"


def entry(recipient: str, title: str, request_id: str = "", **fields) -> pb.SendNotificationRequest:
    notification = pb.Notification(recipient=recipient, title=title, body="b", **fields)
    return pb.SendNotificationRequest(notification=notification, request_id=request_id)


def batch(notifications, *entries: pb.SendNotificationRequest) -> pb.BatchSendNotificationsResponse:
    request = pb.BatchSendNotificationsRequest(requests=list(entries))
    return notifications.call(notifications.stub.BatchSendNotifications(request))


def test_a_batch_stores_every_entry_in_order_and_answers_in_order(notifications):
    sent = batch(notifications, entry(ADA, "one", "r1"), entry(DEE, "two", "r2"), entry(ADA, "three"))

    assert [n.title for n in sent.notifications] == ["one", "two", "three"]
    assert [n.recipient for n in sent.notifications] == [ADA, DEE, ADA]
    assert all(n.name.startswith(f"{n.recipient}/notifications/") for n in sent.notifications)
    assert list(notifications.list(ADA).notifications) == [sent.notifications[0], sent.notifications[2]]
    assert list(notifications.list(DEE).notifications) == [sent.notifications[1]]


def test_a_batch_retried_after_a_lost_answer_stores_nothing_twice(notifications):
    alone = notifications.send(ADA, title="one", body="b", request_id="r1")
    first = batch(notifications, entry(ADA, "one", "r1"), entry(DEE, "two", "r2"))
    again = batch(notifications, entry(ADA, "one", "r1"), entry(DEE, "two", "r2"))

    assert first.notifications[0] == alone  # sent alone before: its first answer
    assert again == first
    assert len(notifications.list(ADA).notifications) == 1
    assert len(notifications.list(DEE).notifications) == 1


@pytest.mark.parametrize(
    ("bad", "fields"),
    [
        (entry("trips/t1", "t"), ["requests[1].notification.recipient"]),
        (entry(ADA, "t", trip="passengers/x"), ["requests[1].notification.trip"]),
        (entry(ADA, " "), ["requests[1].notification.title"]),
        (pb.SendNotificationRequest(), ["requests[1].notification"]),
        (entry(ADA, "t", "x" * 129), ["requests[1].request_id"]),
    ],
)
def test_a_bad_entry_is_named_by_its_index_and_nothing_is_stored(notifications, bad, fields):
    request = pb.BatchSendNotificationsRequest(requests=[entry(ADA, "fine"), bad])

    failure = notifications.fail(notifications.stub.BatchSendNotifications(request))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == fields
    assert notifications.list(ADA).notifications == []


@pytest.mark.parametrize("first_key", ["r9", ""])
def test_an_entry_reusing_a_request_id_for_another_notification_fails_the_whole_batch(
    notifications, first_key
):
    notifications.send(ADA, title="first", request_id="r1")
    request = pb.BatchSendNotificationsRequest(
        requests=[entry(DEE, "new", first_key), entry(ADA, "other", "r1")]
    )

    failure = notifications.fail(notifications.stub.BatchSendNotifications(request))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "REQUEST_ID_REUSED"
    assert failure.fields == ["requests[1].request_id"], "the entry itself, however many before it have a key"
    assert notifications.list(DEE).notifications == []  # the good entry was rolled back with it


def test_a_request_id_twice_in_one_batch_is_stored_once_or_refused_if_the_entries_differ(notifications):
    sent = batch(notifications, entry(ADA, "one", "r1"), entry(DEE, "two"), entry(ADA, "one", "r1"))

    assert sent.notifications[2] == sent.notifications[0]
    assert [n.title for n in notifications.list(ADA).notifications] == ["one"]

    request = pb.BatchSendNotificationsRequest(requests=[entry(DEE, "new", "r7"), entry(ADA, "other", "r7")])
    failure = notifications.fail(notifications.stub.BatchSendNotifications(request))
    assert failure.info.reason == "REQUEST_ID_REUSED"
    assert failure.fields == ["requests[1].request_id"]
    assert [n.title for n in notifications.list(DEE).notifications] == ["two"]


@pytest.mark.parametrize(("count", "refused"), [(0, True), (100, False), (101, True)])
def test_a_batch_holds_one_to_a_hundred_requests(notifications, count, refused):
    request = pb.BatchSendNotificationsRequest(requests=[entry(ADA, f"n{i}") for i in range(count)])

    if refused:
        failure = notifications.fail(notifications.stub.BatchSendNotifications(request))
        assert (failure.code, failure.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["requests"])
        assert notifications.list(ADA).notifications == []
    else:
        sent = notifications.call(notifications.stub.BatchSendNotifications(request))
        assert len(sent.notifications) == 100


def test_open_streams_receive_each_stored_entry_once_in_batch_order(notifications):
    stream = notifications.subscribe(ADA)
    notifications.send(ADA, title="before", body="b", request_id="r0")

    batch(notifications, entry(ADA, "before", "r0"), entry(ADA, "one"), entry(DEE, "x"), entry(ADA, "two"))
    notifications.send(ADA, title="after")

    got = [notifications.read(stream).title for _ in range(4)]
    assert got == ["before", "one", "two", "after"]  # the replayed entry is not delivered again
    stream.cancel()


class BatchReplica(Replica):
    async def batch(self, *entries: pb.SendNotificationRequest) -> list[pb.Notification]:
        """What BatchSendNotifications does."""
        drafts = domain.new_batch([e.notification for e in entries])
        answers, stored = await self.store.send_batch(drafts, list(entries))
        for seq, notification in stored:
            self.feed.committed(seq, notification)
        return answers


def test_the_store_is_all_or_nothing_and_replays_per_entry_on_both_engines(backends, runner):
    a = BatchReplica(backends)

    async def scenario():
        try:
            first = await a.batch(entry(ADA, "one", "r1"), entry(DEE, "two", "r2"))
            with pytest.raises(InvalidArgument) as refused:
                await a.batch(entry(ADA, "three", "r3"), entry(DEE, "changed", "r2"))
            assert refused.value.violations[0].field == "requests[1].request_id"
            again = await a.batch(entry(ADA, "one", "r1"), entry(ADA, "three", "r3"))
            assert again[0] == first[0]
            rows = await a.store.since(0, 10)
            return [n.title for _, n in rows]
        finally:
            await a.close()

    assert runner.run(scenario()) == ["one", "two", "three"]


def test_a_batch_on_one_replica_reaches_a_stream_on_another_on_both_engines(backends, runner):
    a, b = BatchReplica(backends), BatchReplica(backends)

    async def scenario():
        try:
            with await b.feed.subscribe(ADA) as stream:
                await a.batch(entry(ADA, "one"), entry(DEE, "x"), entry(ADA, "two"))
                await b.send(ADA, "three")
                async with asyncio.timeout(WAIT):
                    return await titles(stream, 3)
        finally:
            await a.close()
            await b.close()

    assert runner.run(scenario()) == ["one", "two", "three"]
