"""The in-process broker without a server: fan-out, bounds, and closing."""

from __future__ import annotations

import asyncio

import pytest
from rideshare.notifications.v1 import notifications_pb2 as pb

from services.notifications.broker import Broker
from services.runtime.errors import ResourceExhausted, Unavailable


def note(recipient: str, title: str) -> pb.Notification:
    return pb.Notification(name=f"{recipient}/notifications/{title}", recipient=recipient, title=title)


async def drain(subscription) -> tuple[list[str], Exception | None]:
    titles = []
    try:
        async for notification in subscription:
            titles.append(notification.title)
    except (ResourceExhausted, Unavailable) as error:
        return titles, error
    return titles, None


def test_publish_reaches_only_the_recipient_s_subscriptions():
    async def scenario():
        broker = Broker(queue_size=8)
        with broker.subscribe("passengers/a") as a, broker.subscribe("passengers/b") as b:
            broker.publish(note("passengers/a", "1"))
            broker.publish(note("passengers/b", "2"))
            broker.publish(note("drivers/c", "3"))
            broker.close()
            return await drain(a), await drain(b)

    (a_titles, a_end), (b_titles, _) = asyncio.run(scenario())

    assert a_titles == ["1"]
    assert b_titles == ["2"]
    assert isinstance(a_end, Unavailable)


def test_a_full_subscription_is_ended_and_its_backlog_dropped():
    async def scenario():
        broker = Broker(queue_size=2)
        with broker.subscribe("passengers/a") as slow:
            broker.publish(note("passengers/a", "1"))
            broker.publish(note("passengers/a", "2"))
            assert broker.subscriber_count("passengers/a") == 1
            broker.publish(note("passengers/a", "3"))
            assert broker.subscriber_count() == 0
            broker.publish(note("passengers/a", "4"))
            return await drain(slow)

    titles, end = asyncio.run(scenario())

    assert titles == []
    assert isinstance(end, ResourceExhausted)
    assert end.reason == "STREAM_TOO_SLOW"


def test_a_subscription_that_keeps_up_is_never_ended():
    async def scenario():
        broker = Broker(queue_size=1)
        received = []
        with broker.subscribe("passengers/a") as subscription:
            for i in range(100):
                broker.publish(note("passengers/a", str(i)))
                received.append((await anext(subscription)).title)
            return received, broker.subscriber_count()

    received, count = asyncio.run(scenario())

    assert received == [str(i) for i in range(100)]
    assert count == 1


def test_leaving_the_with_block_unsubscribes_even_on_error():
    broker = Broker()

    with pytest.raises(RuntimeError), broker.subscribe("passengers/a"):
        raise RuntimeError("handler failed")

    assert broker.subscriber_count() == 0


def test_a_closed_broker_refuses_new_subscriptions():
    broker = Broker()
    broker.close()

    with pytest.raises(Unavailable) as caught:
        broker.subscribe("passengers/a")

    assert caught.value.reason == "SERVER_SHUTTING_DOWN"


def test_closing_delivers_what_was_queued_before_ending():
    async def scenario():
        broker = Broker(queue_size=4)
        with broker.subscribe("passengers/a") as subscription:
            broker.publish(note("passengers/a", "1"))
            broker.publish(note("passengers/a", "2"))
            broker.close()
            return await drain(subscription)

    titles, end = asyncio.run(scenario())

    assert titles == ["1", "2"]
    assert isinstance(end, Unavailable)


def test_queue_size_must_be_positive():
    with pytest.raises(ValueError, match="queue_size"):
        Broker(queue_size=0)
