"""The outbox delivery loop against a real store and a scripted notification service."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.trips.background import Background
from services.trips.outbox import Outbox

from .conftest import assigned


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


class Recipient:
    """Stands in for the notification service: records sends, fails while told to."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.failures: list[grpc.StatusCode] = []
        self.received = asyncio.Event()

    async def send(self, notice, request_id: str) -> None:
        if self.failures:
            raise rpc_error(self.failures.pop(0))
        self.sent.append((notice.title, request_id))
        self.received.set()


async def queued(store, count: int) -> list[str]:
    """The outbox ids of `count` assigned trips' notifications, in order."""
    for index in range(count):
        await assigned(store, driver=f"drivers/d{index}")
    return [e.id for e in await store.pending_notices(10)]


def pending(store) -> list:
    return asyncio.run(store.pending_notices(10))


def test_a_pass_sends_in_order_with_the_outbox_id_as_request_id(store):
    ids = asyncio.run(queued(store, 3))
    recipient = Recipient()

    delivered, failed = asyncio.run(Outbox(store, recipient.send).deliver_pending())

    assert (delivered, failed) == (3, False)
    assert [request_id for _, request_id in recipient.sent] == ids
    assert pending(store) == []


def test_an_unreachable_service_stops_the_pass_and_keeps_the_rest_in_order(store):
    ids = asyncio.run(queued(store, 3))
    recipient = Recipient()
    recipient.failures = [grpc.StatusCode.UNAVAILABLE]
    outbox = Outbox(store, recipient.send)

    assert asyncio.run(outbox.deliver_pending()) == (0, True)
    assert [(e.id, e.attempts) for e in pending(store)] == [(ids[0], 1), (ids[1], 0), (ids[2], 0)]

    assert asyncio.run(outbox.deliver_pending()) == (3, False)
    assert [request_id for _, request_id in recipient.sent] == ids


def test_a_refused_notification_is_set_aside_and_the_rest_still_go(store):
    ids = asyncio.run(queued(store, 2))
    recipient = Recipient()
    recipient.failures = [grpc.StatusCode.INVALID_ARGUMENT]

    assert asyncio.run(Outbox(store, recipient.send).deliver_pending()) == (1, False)
    assert [request_id for _, request_id in recipient.sent] == ids[1:]
    assert pending(store) == []


@pytest.mark.timeout(30)
def test_the_loop_retries_with_backoff_until_the_service_is_back(store):
    asyncio.run(assigned(store))
    recipient = Recipient()
    recipient.failures = [grpc.StatusCode.UNAVAILABLE] * 3 + [grpc.StatusCode.DEADLINE_EXCEEDED]

    async def scenario() -> None:
        outbox = Outbox(store, recipient.send, initial_backoff=0.01, max_backoff=0.02, idle_poll=60)
        outbox.start()
        try:
            await recipient.received.wait()
        finally:
            await outbox.stop()

    asyncio.run(scenario())

    assert len(recipient.sent) == 1
    assert pending(store) == []


@pytest.mark.timeout(30)
def test_wake_delivers_new_rows_without_waiting_for_the_poll(store):
    recipient = Recipient()

    async def scenario() -> None:
        outbox = Outbox(store, recipient.send, idle_poll=3600)
        outbox.start()
        try:
            await asyncio.sleep(0)
            await assigned(store)
            outbox.wake()
            await recipient.received.wait()
        finally:
            await outbox.stop()
        outbox.wake()  # after stop: never restarts

    asyncio.run(scenario())

    assert [title for title, _ in recipient.sent] == ["Hello"]


class Polled:
    """The store, telling when the loop has read it and gone back to waiting."""

    def __init__(self, store) -> None:
        self.store = store
        self.read = asyncio.Event()

    async def pending_notices(self, limit: int):
        entries = await self.store.pending_notices(limit)
        self.read.set()
        return entries


@pytest.mark.timeout(30)
def test_stop_ends_the_loop_even_when_a_wake_arrives_with_it(store):
    # On Python 3.11 asyncio.wait_for returned normally when its task was cancelled just as the
    # awaited event fired, so the loop went round again and the service's stop hung for ever.
    recipient = Recipient()

    async def scenario() -> None:
        polled = Polled(store)
        outbox = Outbox(polled, recipient.send, idle_poll=3600)  # type: ignore[arg-type]
        outbox.start()
        await polled.read.wait()
        outbox.wake()
        await outbox.stop()
        assert outbox.task._task is None

    asyncio.run(scenario())


def test_a_stop_that_is_cancelled_itself_gives_up(store):
    async def scenario() -> str:
        outbox = Outbox(store, Recipient().send, idle_poll=3600)
        outbox.start()
        stopping = asyncio.ensure_future(outbox.stop())
        await asyncio.sleep(0)  # one turn of the loop: the stop is now waiting for the task
        stopping.cancel()
        try:
            await stopping
        except asyncio.CancelledError:
            return "cancelled"
        return "swallowed"

    assert asyncio.run(scenario()) == "cancelled"


@pytest.mark.timeout(30)
def test_stop_ends_a_task_that_dropped_its_cancel():
    # psycopg_pool waits for a connection with asyncio.wait_for, which on Python 3.11 drops a cancel
    # arriving with the connection: the task runs on as if it had never been cancelled.
    async def scenario() -> int:
        dropped = 0

        async def run() -> None:
            nonlocal dropped
            while True:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    if dropped:
                        raise
                    dropped += 1  # swallowed, as wait_for does

        task = Background("dropping", run)
        task.start()
        await asyncio.sleep(0)  # running, and waiting
        await task.stop()
        return dropped

    assert asyncio.run(scenario()) == 1
