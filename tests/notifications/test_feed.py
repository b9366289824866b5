"""The feed: two replicas (two stores and feeds on one database, both engines) as one service to streams;
on PostgreSQL told by NOTIFY, and made whole again from the table after a lost connection."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from rideshare.notifications.v1 import notifications_pb2 as pb

from services.notifications import domain
from services.notifications.broker import Broker
from services.notifications.feed import Feed
from services.notifications.store import CHANNEL, MIGRATIONS, SEQUENCE_LOCK, NotificationStore
from services.runtime.errors import Unavailable
from tests.postgres import Backends

WAIT = 10.0


class Replica:
    """What one process of the service holds: its store (own connection), broker and feed."""

    def __init__(self, backends: Backends) -> None:
        self.store = NotificationStore(backends.open(MIGRATIONS))
        self.feed = Feed(Broker(queue_size=64), self.store, poll_interval=0.05)

    async def send(self, recipient: str, title: str, request_id: str = "") -> pb.Notification:
        """What SendNotification does."""
        request = pb.SendNotificationRequest(
            notification=pb.Notification(recipient=recipient, title=title, body="b"), request_id=request_id
        )
        notification, seq = await self.store.send(domain.new_notification(request.notification), request)
        if seq is not None:
            self.feed.committed(seq, notification)
        return notification

    async def close(self) -> None:
        await self.feed.close()
        await self.store.close()


async def titles(subscription, count: int) -> list[str]:
    got = []
    async with asyncio.timeout(WAIT):
        async for notification in subscription:
            got.append(notification.title)
            if len(got) == count:
                return got
    return got


def test_a_stream_on_one_replica_gets_what_every_replica_commits_in_commit_order(backends, runner):
    a, b = Replica(backends), Replica(backends)

    async def scenario():
        try:
            await a.send("passengers/p", "before the stream")  # not the stream's: it was not open yet
            with await a.feed.subscribe("passengers/p") as stream:
                await b.send("passengers/p", "1 from b")
                await a.send("passengers/p", "2 from a")  # a's own, after b's: must not overtake it
                await b.send("drivers/d", "someone else's")
                await b.send("passengers/p", "3 from b")
                return await titles(stream, 3)
        finally:
            await a.close()
            await b.close()

    assert runner.run(scenario()) == ["1 from b", "2 from a", "3 from b"]


def test_each_notification_reaches_each_stream_once_however_it_was_seen(backends, runner):
    a, b = Replica(backends), Replica(backends)

    async def scenario():
        try:
            with (
                await a.feed.subscribe("passengers/p") as on_a,
                await b.feed.subscribe("passengers/p") as on_b,
            ):
                for n in range(20):
                    await (a if n % 3 else b).send("passengers/p", str(n))
                await a.send("passengers/p", "20", request_id="k")
                await a.send("passengers/p", "20", request_id="k")  # replays: stored once, delivered once
                await b.send("passengers/p", "20", request_id="k")
                await a.send("passengers/p", "last")
                return await titles(on_a, 22), await titles(on_b, 22)
        finally:
            await a.close()
            await b.close()

    expected = [str(n) for n in range(21)] + ["last"]
    assert runner.run(scenario()) == (expected, expected)


def test_the_feed_stops_following_when_the_last_stream_goes_and_starts_again(backends, runner):
    a, b = Replica(backends), Replica(backends)

    async def scenario():
        try:
            with await a.feed.subscribe("passengers/p"):
                assert a.feed.position is not None
            async with asyncio.timeout(WAIT):
                while a.feed.position is not None:  # noqa: ASYNC110 - the follower notices within a poll
                    await asyncio.sleep(0.01)
            await b.send("passengers/p", "while nobody listened")
            with await a.feed.subscribe("passengers/p") as stream:
                await b.send("passengers/p", "after")
                return await titles(stream, 1)
        finally:
            await a.close()
            await b.close()

    assert runner.run(scenario()) == ["after"]


def test_closing_ends_the_streams_with_unavailable(backends, runner):
    a = Replica(backends)

    async def scenario():
        try:
            with await a.feed.subscribe("passengers/p") as stream:
                await a.feed.close()
                try:
                    await titles(stream, 1)
                except Unavailable:
                    return "unavailable"
                return "ended quietly"
        finally:
            await a.store.close()

    assert runner.run(scenario()) == "unavailable"


class Listening:
    """Stands in for `Backend.listen`: the test says when the feed hears something, or reconnects."""

    def __init__(self) -> None:
        self.heard: asyncio.Queue[str | None] = asyncio.Queue()
        self.heard.put_nowait(None)  # connected

    async def listen(self, channel: str):
        while True:
            yield await self.heard.get()


def test_after_a_lost_connection_the_feed_reads_what_it_missed_and_skips_what_it_had(backends, runner):
    a, b = Replica(backends), Replica(backends)
    told = Listening()
    a.store.db.listen = told.listen  # type: ignore[method-assign]

    async def scenario() -> list[str]:
        try:
            with await a.feed.subscribe("passengers/p") as stream:
                await a.send("passengers/p", "1 from a")  # its own: published at once
                await b.send("passengers/p", "2 from b")  # its NOTIFY lost with the connection
                await b.send("passengers/p", "3 from b")
                told.heard.put_nowait(None)  # connected again
                return await titles(stream, 3)
        finally:
            await a.close()
            await b.close()

    assert runner.run(scenario()) == ["1 from a", "2 from b", "3 from b"]


@pytest.mark.parametrize("backends", ["postgres"], indirect=True)
def test_a_notification_stored_while_another_is_uncommitted_is_numbered_after_it(backends, runner):
    """An identity value is taken at insert, not at commit: without the lock the second would commit
    first with the higher `seq`, and a feed that read it would never read the first."""
    a, b, watcher = Replica(backends), Replica(backends), Replica(backends)
    first = domain.new_notification(pb.Notification(recipient="passengers/p", title="first", body="b"))

    async def scenario() -> list[str]:
        try:
            with await watcher.feed.subscribe("passengers/p") as stream:
                async with a.store.db.transaction() as tx:
                    await tx.lock(SEQUENCE_LOCK)
                    await a.store.insert(tx, first)
                    await tx.notify(CHANNEL, "0")
                    second = asyncio.ensure_future(b.send("passengers/p", "second"))
                    await waiting_for_a_lock(backends)
                    assert not second.done()
                await second
                return await titles(stream, 2)
        finally:
            for replica in (a, b, watcher):
                await replica.close()

    assert runner.run(scenario()) == ["first", "second"]


WAITING = (
    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


async def waiting_for_a_lock(backends) -> None:
    """Until some transaction of the test's database waits for an advisory lock (no event says so)."""
    admin = await psycopg.AsyncConnection.connect(backends.dsn(), autocommit=True)
    async with asyncio.timeout(WAIT), admin:
        while not await (await admin.execute(WAITING)).fetchone():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def test_a_feed_that_cannot_read_ends_its_streams_and_a_new_one_follows_again(backends, runner):
    a, b = Replica(backends), Replica(backends)
    since = a.store.since

    async def unreachable(seq: int, limit: int):
        raise Unavailable("database is unavailable", reason="DATABASE_UNAVAILABLE")

    async def scenario() -> tuple[str, list[str]]:
        try:
            with await a.feed.subscribe("passengers/p") as stream:
                a.store.since = unreachable  # type: ignore[method-assign]
                await b.send("passengers/p", "while the database was away")
                a.feed.committed(10**9, pb.Notification())  # wake it: it reads now
                try:
                    await titles(stream, 1)
                    ended = "not ended"
                except Unavailable as error:
                    ended = error.reason
            a.store.since = since  # type: ignore[method-assign]
            with await a.feed.subscribe("passengers/p") as again:
                await b.send("passengers/p", "back")
                return ended, await titles(again, 1)
        finally:
            await a.close()
            await b.close()

    assert runner.run(scenario()) == ("DATABASE_UNAVAILABLE", ["back"])
