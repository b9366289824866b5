"""The outbox delivery loop against a real store (both engines) and a scripted notification service."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from prometheus_client import CollectorRegistry

from services.runtime.errors import Unavailable
from services.trips.background import Background
from services.trips.outbox import Outbox, OutboxMetrics
from services.trips.store import MIGRATIONS, NOTICE, RELEASE, TripStore

from .conftest import assigned

WAIT = 10.0


@pytest.fixture
def store(backends) -> TripStore:
    """The trip store on a fresh database, once per engine."""
    return TripStore(backends.open(MIGRATIONS))


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
    return [e.id for e in await store.outbox_pending(10)]


def pending(runner, store) -> list:
    return runner.run(store.outbox_pending(10))


def test_a_pass_sends_in_order_with_the_outbox_id_as_request_id(runner, store):
    ids = runner.run(queued(store, 3))
    recipient = Recipient()

    delivered, failed = runner.run(Outbox(store, recipient.send).deliver_pending())

    assert (delivered, failed) == (3, False)
    assert [request_id for _, request_id in recipient.sent] == ids
    assert pending(runner, store) == []


def test_an_unreachable_service_stops_the_pass_and_keeps_the_rest_in_order(runner, store):
    ids = runner.run(queued(store, 3))
    recipient = Recipient()
    recipient.failures = [grpc.StatusCode.UNAVAILABLE]
    outbox = Outbox(store, recipient.send)

    assert runner.run(outbox.deliver_pending()) == (0, True)
    assert [(e.id, e.attempts) for e in pending(runner, store)] == [(ids[0], 1), (ids[1], 0), (ids[2], 0)]

    assert runner.run(outbox.deliver_pending()) == (3, False)
    assert [request_id for _, request_id in recipient.sent] == ids


def test_a_refused_notification_is_set_aside_and_the_rest_still_go(runner, store):
    ids = runner.run(queued(store, 2))
    recipient = Recipient()
    recipient.failures = [grpc.StatusCode.INVALID_ARGUMENT]

    assert runner.run(Outbox(store, recipient.send).deliver_pending()) == (1, False)
    assert [request_id for _, request_id in recipient.sent] == ids[1:]
    assert pending(runner, store) == []


def test_an_operator_sees_what_each_kind_delivered_and_how_long_it_has_been_failing(runner, store):
    runner.run(queued(store, 3))
    recipient = Recipient()
    recipient.failures = [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INVALID_ARGUMENT,
    ]
    notices, releases = Outbox(store, recipient.send), Outbox(store, recipient.send, kind=RELEASE)
    registry = CollectorRegistry()
    registry.register(OutboxMetrics([notices, releases]))

    def sample(name: str, kind: str = NOTICE) -> float | None:
        return registry.get_sample_value(name, {"kind": kind})

    runner.run(notices.deliver_pending())
    runner.run(notices.deliver_pending())
    assert sample("trips_outbox_retries_total") == 2
    assert sample("trips_outbox_failing_seconds") > 0, "failing since the first of the two passes"

    runner.run(notices.deliver_pending())  # the first row refused for good, the other two go
    assert (sample("trips_outbox_delivered_total"), sample("trips_outbox_dead_total")) == (2, 1)
    assert sample("trips_outbox_failing_seconds") == 0
    assert [sample(f"trips_outbox_{n}", RELEASE) for n in ("delivered_total", "failing_seconds")] == [0, 0]


class Batches(Recipient):
    """Also takes batches (BatchSendNotifications): records each call's request_ids, fails while told to."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.batch_failures: list[grpc.StatusCode] = []

    async def send_batch(self, notices) -> None:
        if self.batch_failures:
            raise rpc_error(self.batch_failures.pop(0))
        self.batches.append([request_id for _, request_id in notices])


def test_a_pass_sends_its_rows_as_one_batch_in_order(runner, store):
    ids = runner.run(queued(store, 3))
    recipient = Batches()

    outbox = Outbox(store, recipient.send, send_batch=recipient.send_batch)

    assert runner.run(outbox.deliver_pending()) == (len(ids), False)
    assert recipient.batches == [ids]
    assert recipient.sent == []
    assert pending(runner, store) == []


def test_batches_hold_at_most_a_hundred_rows(runner, store):
    runner.run(queued(store, 102))  # one notice each
    recipient = Batches()
    outbox = Outbox(store, recipient.send, send_batch=recipient.send_batch, batch=500)

    assert runner.run(outbox.deliver_pending()) == (100, False)
    assert runner.run(outbox.deliver_pending()) == (2, False)
    assert [len(batch) for batch in recipient.batches] == [100, 2]


def test_a_batch_that_may_pass_later_keeps_every_row_in_order_for_the_next_pass(runner, store):
    ids = runner.run(queued(store, 3))
    recipient = Batches()
    recipient.batch_failures = [grpc.StatusCode.UNAVAILABLE]
    outbox = Outbox(store, recipient.send, send_batch=recipient.send_batch)

    assert runner.run(outbox.deliver_pending()) == (0, True)
    assert [(e.id, e.attempts) for e in pending(runner, store)] == [(i, 1) for i in ids]

    assert runner.run(outbox.deliver_pending()) == (len(ids), False)
    assert recipient.batches == [ids]


def test_a_refused_batch_is_sent_row_by_row_so_only_the_bad_row_is_set_aside(runner, store):
    ids = runner.run(queued(store, 2))
    recipient = Batches()
    recipient.batch_failures = [grpc.StatusCode.INVALID_ARGUMENT]  # the batch, for its second row
    refused = ids[1]

    async def send(notice, request_id: str) -> None:
        if request_id == refused:
            raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT)
        await recipient.send(notice, request_id)

    outbox = Outbox(store, send, send_batch=recipient.send_batch)

    assert runner.run(outbox.deliver_pending()) == (len(ids) - 1, False)
    assert [request_id for _, request_id in recipient.sent] == [i for i in ids if i != refused]
    assert pending(runner, store) == []  # the refused row is dead: kept for an operator, not retried
    assert runner.run(outbox.deliver_pending()) == (0, False)
    assert recipient.batches == []


@pytest.mark.timeout(30)
def test_the_loop_retries_with_backoff_until_the_service_is_back(runner, store):
    runner.run(assigned(store))
    recipient = Recipient()
    recipient.failures = [grpc.StatusCode.UNAVAILABLE] * 3 + [grpc.StatusCode.DEADLINE_EXCEEDED]

    async def scenario() -> None:
        watched = Watched(store)
        outbox = Outbox(watched, recipient.send, initial_backoff=0.01, max_backoff=0.02, idle_poll=60)  # type: ignore[arg-type]
        outbox.start()
        try:
            await watched.delivered.wait()
        finally:
            await outbox.stop()

    runner.run(scenario())

    assert len(recipient.sent) == 1
    assert pending(runner, store) == []


class Watched:
    """The store, telling when a row was delivered (sent, then deleted by the next claim)."""

    def __init__(self, store: TripStore) -> None:
        self.store = store
        self.delivered = asyncio.Event()

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    async def claim_outbox(self, owner: str, limit: int, ttl: float, delivered=(), kind=NOTICE):
        entries = await self.store.claim_outbox(owner, limit, ttl, delivered, kind)
        if delivered:
            self.delivered.set()
        return entries


class Outage(Watched):
    """The store whose database goes away as the first delivery is recorded, for that claim and
    `claims` more."""

    def __init__(self, store: TripStore, claims: int) -> None:
        super().__init__(store)
        self.claims = claims
        self.failing: int | None = None

    async def claim_outbox(self, owner: str, limit: int, ttl: float, delivered=(), kind=NOTICE):
        if delivered and self.failing is None:
            self.failing = self.claims + 1
        if self.failing:
            self.failing -= 1
            raise Unavailable(
                "database 127.0.0.1:5432/trips is unavailable: connection refused",
                reason="DATABASE_UNAVAILABLE",
                metadata={"database": "127.0.0.1:5432/trips"},
            )
        return await super().claim_outbox(owner, limit, ttl, delivered, kind)


def test_its_database_away_is_one_warning_without_traceback_and_a_line_when_it_is_back(runner, store, caplog):
    caplog.set_level(logging.INFO, "rideshare.trips")
    runner.run(assigned(store))
    recipient = Recipient()

    async def scenario() -> None:
        watched = Outage(store, claims=3)
        outbox = Outbox(watched, recipient.send, initial_backoff=0.01, max_backoff=0.02, idle_poll=60)  # type: ignore[arg-type]
        outbox.start()
        try:
            # Sent, then its record failed: the loop keeps it as sent, deleted once the database is back.
            await asyncio.wait_for(watched.delivered.wait(), WAIT)
        finally:
            await outbox.stop()

    runner.run(scenario())

    assert pending(runner, store) == []
    assert len(recipient.sent) == 1, "sent before the outage, not again after it"
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "rideshare.trips.outbox"]
    assert lines == [
        ("WARNING", "trips-outbox: its database unavailable: "
                    "database 127.0.0.1:5432/trips is unavailable: connection refused"),
        ("INFO", "trips-outbox: its database available again after 4 failures"),
    ]  # fmt: skip
    assert not [r for r in caplog.records if r.exc_info], "an outage is not a bug: no traceback"


@pytest.mark.timeout(30)
def test_wake_delivers_new_rows_without_waiting_for_the_poll(runner, store):
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

    runner.run(scenario())

    assert [title for title, _ in recipient.sent] == ["Hello"]


class Polled:
    """The store, telling when the loop has read it and gone back to waiting."""

    def __init__(self, store) -> None:
        self.store = store
        self.read = asyncio.Event()

    async def claim_outbox(self, owner: str, limit: int, ttl: float, delivered=(), kind=NOTICE):
        entries = await self.store.claim_outbox(owner, limit, ttl, delivered, kind)
        self.read.set()
        return entries

    async def end_claims(self, owner: str, delivered=()) -> None:
        await self.store.end_claims(owner, delivered)


@pytest.mark.timeout(30)
def test_stop_ends_the_loop_even_when_a_wake_arrives_with_it(runner, store):
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

    runner.run(scenario())


def test_a_stop_that_is_cancelled_itself_gives_up(runner, store):
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

    assert runner.run(scenario()) == "cancelled"


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


class Interleaving(Recipient):
    """Records which replica sent what, yielding to the loop on every send so replicas interleave."""

    def __init__(self) -> None:
        super().__init__()
        self.by: dict[str, list[tuple[str, str]]] = {}

    def sender(self, replica: str):
        async def send(notice, request_id: str) -> None:
            await asyncio.sleep(0)
            self.by.setdefault(replica, []).append((notice.recipient, request_id))
            await asyncio.sleep(0)

        return send


def test_two_replicas_draining_one_outbox_send_every_notice_once_in_order_per_recipient(backends, runner):
    first, second = TripStore(backends.open(MIGRATIONS)), TripStore(backends.open(MIGRATIONS))
    recipient = Interleaving()

    async def scenario() -> list[tuple[str, str]]:
        for n in range(60):  # 60 notifications to 6 passengers, written by both replicas
            await assigned(
                first if n % 2 else second, passenger=f"passengers/p{n % 6}", driver=f"drivers/d{n}"
            )
        queued = [(e.item.recipient, e.id) for e in await first.outbox_pending(100)]
        replicas = [
            Outbox(first, recipient.sender("first"), batch=8),
            Outbox(second, recipient.sender("second"), batch=8),
        ]

        async def drain(outbox: Outbox) -> None:
            # Round and round like the loop, until the outbox is empty (rows another replica held
            # back are free once it delivered them).
            while (await outbox.deliver_pending())[0] or await outbox.store.outbox_pending(1):  # noqa: ASYNC110
                await asyncio.sleep(0)

        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(drain(outbox) for outbox in replicas))
        return queued

    queued = runner.run(scenario())
    sent = [pair for sends in recipient.by.values() for pair in sends]
    assert sorted(sent) == sorted(queued), "every notice sent, none twice"
    assert set(recipient.by) == {"first", "second"}, "both replicas took a share"
    for passenger in {r for r, _ in queued}:
        in_order = [i for r, i in queued if r == passenger]
        # each replica's sends of one recipient, and the interleaving of both, follow the outbox's order
        merged = [i for sends in recipient.by.values() for r, i in sends if r == passenger]
        assert sorted(merged, key=in_order.index) == in_order
        for sends in recipient.by.values():
            mine = [i for r, i in sends if r == passenger]
            assert mine == sorted(mine, key=in_order.index)
    assert runner.run(first.outbox_pending(100)) == []


def test_rows_claimed_by_a_replica_that_died_are_sent_once_the_claim_expires(runner, store):
    ids = runner.run(queued(store, 3))
    recipient = Recipient()
    outbox = Outbox(store, recipient.send)

    runner.run(store.claim_outbox("dead-replica", 10, 60))
    assert runner.run(outbox.deliver_pending()) == (0, False), "claimed by a replica still counted alive"

    runner.run(store.end_claims("dead-replica"))
    runner.run(store.claim_outbox("dead-replica", 10, -1))  # claimed, and the claim has run out
    assert runner.run(outbox.deliver_pending()) == (3, False)
    assert [request_id for _, request_id in recipient.sent] == ids


def test_a_later_notice_waits_while_another_replica_has_an_earlier_one_of_its_recipient(runner, store):
    async def scenario() -> tuple[list[str], list[str]]:
        await assigned(store, passenger="passengers/p1", driver="drivers/d1")
        [held] = await store.claim_outbox("other-replica", 1, 60)  # in flight on another replica
        await assigned(store, passenger="passengers/p1", driver="drivers/d2")
        await assigned(store, passenger="passengers/p2", driver="drivers/d3")
        recipient = Recipient()
        await Outbox(store, recipient.send).deliver_pending()
        passed_over = [request_id for _, request_id in recipient.sent]
        await store.outbox_delivered([held.id])  # the other replica is done with it
        await Outbox(store, recipient.send).deliver_pending()
        return passed_over, [request_id for _, request_id in recipient.sent]

    passed_over, sent = runner.run(scenario())
    assert len(passed_over) == 1, "only p2's notice: p1's second waits for its first"
    assert len(sent) == 2


def test_a_stopping_replica_gives_its_claims_back(runner, store):
    ids = runner.run(queued(store, 2))

    async def scenario() -> list[str]:
        stopping = Outbox(store, Recipient().send, owner="stopping")
        await store.claim_outbox(stopping.owner, 10, 60)  # claimed, not sent yet
        await stopping.stop()
        recipient = Recipient()
        await Outbox(store, recipient.send).deliver_pending()
        return [request_id for _, request_id in recipient.sent]

    assert runner.run(scenario()) == ids


class Counted(Watched):
    """The store, recording each claim's `delivered` and what it returned, telling of each claim."""

    def __init__(self, store: TripStore) -> None:
        super().__init__(store)
        self.claims: list[tuple[list[str], list[str]]] = []
        self.claimed = asyncio.Event()

    async def claim_outbox(self, owner: str, limit: int, ttl: float, delivered=(), kind=NOTICE):
        entries = await super().claim_outbox(owner, limit, ttl, delivered, kind)
        self.claims.append((list(delivered), [e.id for e in entries]))
        self.claimed.set()
        return entries


@pytest.mark.timeout(30)
def test_a_burst_of_steps_goes_out_in_one_batch_in_order_and_one_transaction_records_it(runner, store):
    recipient = Batches()
    sent = asyncio.Event()

    async def send_batch(notices) -> None:
        await recipient.send_batch(notices)
        sent.set()

    async def scenario() -> list[str]:
        counted = Counted(store)
        # A linger no test waits out: only `batch` wakes end it, so the claim sees the whole burst.
        outbox = Outbox(counted, recipient.send, send_batch=send_batch, batch=4, linger=3600, idle_poll=3600)  # type: ignore[arg-type]
        outbox.start()
        try:
            await counted.claimed.wait()  # the first look: nothing yet, it waits for a step
            for n in range(4):
                await assigned(store, passenger=f"passengers/p{n % 2}", driver=f"drivers/d{n}")
                outbox.wake()
            await sent.wait()
            await counted.delivered.wait()  # a full pass: it claims again at once, deleting the sent rows
        finally:
            await outbox.stop()
        ids = [i for batch in recipient.batches for i in batch]
        assert counted.claims == [([], []), ([], ids), (ids, [])]
        return ids

    ids = runner.run(scenario())
    assert len(recipient.batches) == 1, "four steps, one call"
    assert recipient.sent == []
    assert len(ids) == 4
    assert pending(runner, store) == []


@pytest.mark.timeout(30)
def test_the_rows_a_pass_sent_are_deleted_by_the_claim_of_the_next_pass(runner, store):
    recipient = Recipient()
    gate = asyncio.Event()

    async def send(notice, request_id: str) -> None:
        await gate.wait()  # the first send lasts until the second step is written
        await recipient.send(notice, request_id)

    async def scenario() -> list[tuple[list[str], list[str]]]:
        counted = Counted(store)
        outbox = Outbox(counted, send, batch=1, linger=3600, idle_poll=3600)  # type: ignore[arg-type]
        outbox.start()
        try:
            await counted.claimed.wait()
            for n in range(2):
                await assigned(store, driver=f"drivers/d{n}")
                outbox.wake()
            gate.set()
            while len(counted.claims) < 4:
                counted.claimed.clear()
                await counted.claimed.wait()
        finally:
            await outbox.stop()
        return counted.claims

    claims = runner.run(scenario())
    first, second = [request_id for _, request_id in recipient.sent]
    # one transaction a pass: each claim deletes what the pass before it sent
    assert claims == [([], []), ([], [first]), ([first], [second]), ([second], [])]
    assert pending(runner, store) == []


def test_an_idle_loop_makes_no_call_and_no_transaction(runner, store):
    recipient = Batches()

    async def scenario() -> int:
        counted = Counted(store)
        outbox = Outbox(counted, recipient.send, send_batch=recipient.send_batch, idle_poll=3600)  # type: ignore[arg-type]
        outbox.start()
        try:
            await counted.claimed.wait()
            for _ in range(1000):  # many turns of the event loop: no polling, no busy loop
                await asyncio.sleep(0)
        finally:
            await outbox.stop()
        return len(counted.claims)

    assert runner.run(scenario()) == 1
    assert recipient.sent == []
    assert recipient.batches == []
