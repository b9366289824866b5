"""StreamNotifications: live delivery per recipient, cancellation, slow clients, shutdown."""

from __future__ import annotations

import asyncio

import grpc
from rideshare.notifications.v1 import notifications_pb2 as pb

from tests.conftest import failure_of

from .conftest import QUEUE_SIZE

ADA = "passengers/ada"
BOB = "passengers/bob"
DEE = "drivers/dee"


def test_a_stream_receives_what_is_sent_to_its_recipient_after_it_opened_in_order(notifications):
    notifications.send(ADA, title="before")
    stream = notifications.subscribe(ADA)

    notifications.send(BOB, title="for bob")
    notifications.send(DEE, title="for dee")
    sent = [notifications.send(ADA, title=f"live {i}") for i in range(3)]

    assert [notifications.read(stream) for _ in sent] == sent
    stream.cancel()


def test_a_driver_stream_gets_only_the_driver_s_notifications(notifications):
    stream = notifications.subscribe(DEE)

    notifications.send(ADA)
    for_dee = notifications.send(DEE, title="New trip", trip="trips/t1")

    assert notifications.read(stream) == for_dee
    stream.cancel()


def test_two_streams_of_one_recipient_both_receive_everything(notifications):
    first = notifications.subscribe(ADA)
    second = notifications.subscribe(ADA)
    assert notifications.broker.subscriber_count(ADA) == 2

    sent = [notifications.send(ADA, title=f"n{i}") for i in range(2)]

    assert [notifications.read(first) for _ in sent] == sent
    assert [notifications.read(second) for _ in sent] == sent
    first.cancel()
    second.cancel()


def test_cancelling_a_stream_removes_its_subscriber(notifications):
    stream = notifications.subscribe(ADA)
    other = notifications.subscribe(DEE)
    assert notifications.broker.subscriber_count() == 2

    stream.cancel()
    notifications.wait_until_unsubscribed(ADA)

    assert notifications.broker.subscriber_count() == 1
    notifications.send(ADA)
    delivered = notifications.send(DEE)
    assert notifications.read(other) == delivered
    other.cancel()
    notifications.wait_until_unsubscribed(DEE)
    assert notifications.broker.subscriber_count() == 0


def test_a_replayed_send_is_not_delivered_a_second_time(notifications):
    stream = notifications.subscribe(ADA)

    first = notifications.send(ADA, title="once", request_id="n-1")
    assert notifications.send(ADA, title="once", request_id="n-1") == first
    marker = notifications.send(ADA, title="marker")

    assert notifications.read(stream) == first
    assert notifications.read(stream) == marker
    stream.cancel()


def test_a_stream_that_falls_behind_is_ended_with_resource_exhausted(notifications):
    stream = notifications.subscribe(ADA)
    other = notifications.subscribe(ADA)
    sent = notifications.send(ADA)
    assert notifications.read(other) == sent

    # Published back to back with no await between, so neither stream's handler can drain its queue.
    for _ in range(QUEUE_SIZE + 1):
        notifications.broker.publish(sent)

    async def outcome(call):
        received = []
        try:
            async for message in call:
                received.append(message)
        except grpc.aio.AioRpcError as error:
            return received, failure_of(error)
        return received, None

    received, failure = notifications.call(outcome(stream))
    assert received == [sent]
    assert failure.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failure.info.reason == "STREAM_TOO_SLOW"
    assert failure.info.domain == "notifications.rideshare"
    assert notifications.broker.subscriber_count(ADA) == 0
    other.cancel()


def test_shutdown_ends_open_streams_with_unavailable_instead_of_waiting_out_the_grace(notifications):
    running = notifications.running
    stream = notifications.subscribe(ADA)
    sent = notifications.send(ADA)

    async def stop_while_streaming():
        received = []
        stopping = asyncio.ensure_future(running.server.stop(grace=30))
        try:
            async for message in stream:
                received.append(message)
        except grpc.aio.AioRpcError as error:
            await stopping
            return received, failure_of(error)
        await stopping
        return received, None

    running.stopped = True
    received, failure = notifications.call(stop_while_streaming())
    notifications.call(running.channel.close())

    assert received == [sent]
    assert failure.code is grpc.StatusCode.UNAVAILABLE
    # Ended by the service, not by grpc cancelling every call when the grace ran out.
    assert failure.info.reason == "SERVER_SHUTTING_DOWN"
    assert notifications.broker.subscriber_count() == 0


def test_a_stream_for_a_malformed_parent_is_refused(notifications):
    async def attempt():
        call = notifications.stub.StreamNotifications(pb.StreamNotificationsRequest(parent="trips/t1"))
        return [message async for message in call]

    failure = notifications.fail(attempt())

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["parent"]
