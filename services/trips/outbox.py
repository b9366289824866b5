"""Delivering the outbox: at least once, in order per recipient, however long the service it goes to
is away, from every replica at once.

A trip step writes what it owes other services to the `outbox` table in the
same transaction as the step (`store.transition`): its notifications, and when
the trip ends (cancelled or completed) the release of its driver. So a step
never fails, and nothing is lost or invented, because of the notification
service or the drivers service. A loop per kind of row (`kind`: NOTICE to the
notification service, RELEASE to drivers) sends its pending rows oldest first,
each with `request_id = <outbox id>` (a release's is its trip's
`<trip>:release`): a row re-sent after a lost answer or a crash takes effect
once (AIP-155), which makes "at least once" exactly once. The two loops share
nothing but the table: a drivers outage does not hold notifications back.

- Each replica's loop claims a batch of rows (`store.claim_outbox`: on
  PostgreSQL `FOR UPDATE SKIP LOCKED`, so replicas claim different rows)
  for `CLAIM_SECONDS`, and sends only what it claimed, so no row is sent by
  two replicas; a crashed replica's claims are taken over when they expire,
  and a stopping one gives its claims back. A recipient's rows go out in
  order: while one replica has an earlier row of a recipient in hand, the
  others leave that recipient's later rows alone.
- A pass sends what it claimed (up to `batch`, at most 100) as one batch
  call (BatchSendNotifications, BatchReleaseTrips), oldest first, so a
  recipient's rows keep their order; each entry still carries its outbox id
  as request_id, so a batch re-sent after a lost answer, or an entry sent
  alone later, takes effect once. The batch is all or nothing on the other
  side. A refusal that will never pass, for the batch, sends the same rows
  one by one (SendNotification, ReleaseTrip), so only the refused row is
  marked dead (below) and the others go out; a failure that may pass is
  handled as for one row.
- Delivered rows are deleted in the transaction that claims the next rows
  (or by `stop`): a pass at a steady rate is one write transaction.
- A failure that may pass (UNAVAILABLE, DEADLINE_EXCEEDED, ...) stops the
  pass and gives the claimed rows back, so later rows wait behind earlier
  ones, and the loop backs off exponentially (`initial_backoff` doubling up
  to `max_backoff`).
- A refusal that will never pass (INVALID_ARGUMENT, ...) marks the row dead:
  kept with its error for an operator, logged, never retried.
- Coalescing: a step wakes the loop (`wake()`), which then lingers
  `LINGER` (10 ms) before it claims, or less once `batch` steps have woken
  it, so one pass carries the rows of every step in that time, not one step
  each; after a pass that sent something it lingers the same way and claims
  again (rows another replica held back may be free now; a full pass claims
  again at once). A notification waits at most the linger longer than it
  would without it (10 ms; a ride's steps are seconds apart). An idle
  loop makes no call and no transaction: after an empty claim it waits for
  a wake, or polls every `idle_poll` seconds, so rows left by another
  replica or a previous process are sent.
- A step that must see what this process's earlier steps queued as done
  waits for the loop's next pass (`through`): RequestTrip, finding no
  driver, waits for the releases of trips that ended a moment ago, which
  are free drivers the drivers service does not know of yet.
- Counted for operators (`OutboxMetrics`, on the trip service's /metrics,
  by kind): rows delivered, passes that found the service away, rows dead,
  and how long deliveries have been failing (0 while they go out): a drivers
  outage shows as `trips_outbox_failing_seconds{kind="release"}` rising while
  the drivers it has not released stay ON_TRIP.
- Its own database out of reach (UNAVAILABLE `DATABASE_UNAVAILABLE`) is an
  outage, not a bug: the loop backs off the same way, says so in one
  warning line without a traceback and then at most one per 10 s
  (`log.Outage`), and in one line when the database is back; its next claim
  takes the rows it had claimed before again (a claim lost with the
  database's answer included), not leaving them to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol

import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from services.runtime import log
from services.runtime.aip import MAX_BATCH
from services.runtime.errors import Unavailable
from services.runtime.tracing import continued

from .background import Background, owner_name
from .store import NOTICE, RELEASE, OutboxEntry

_log = log.get_logger("rideshare.trips.outbox")

#: Codes that say the notification will never be accepted as it is.
PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)

Send = Callable[[Any, str], Awaitable[object]]
"""Sends one row's item (a Notice, a Release) with its request_id."""
SendBatch = Callable[[list[tuple[Any, str]]], Awaitable[object]]
WORDS = {NOTICE: ("notification", "notification service"), RELEASE: ("driver release", "drivers service")}
"""What the logs call a row of each kind, and where it goes."""
CLAIM_SECONDS = 30.0
"""How long claimed rows are a replica's to send: a crashed replica's rows wait this long; a pass
sending for longer than this may see its last rows sent by another replica too (then the same
request_id makes it one notification)."""
LINGER = 0.01
"""How long a woken loop (or one that has just sent) waits for more steps before it claims: the
most a notification is delayed, for a pass to carry the rows of several steps."""


class OutboxStore(Protocol):
    async def claim_outbox(
        self, owner: str, limit: int, ttl: float, delivered: Sequence[str] = (), kind: str = NOTICE
    ) -> list[OutboxEntry]: ...
    async def end_claims(self, owner: str, delivered: Sequence[str] = ()) -> None: ...
    async def outbox_delivered(self, entry_ids: Sequence[str]) -> None: ...
    async def outbox_failed(self, entry_ids: Sequence[str], error: str, *, dead: bool) -> None: ...


class Outbox:
    """The delivery loop of one kind of row (`kind`) over a store's outbox."""

    def __init__(
        self,
        store: OutboxStore,
        send: Send,
        *,
        send_batch: SendBatch | None = None,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        idle_poll: float = 5.0,
        linger: float = LINGER,
        batch: int = 100,
        owner: str = "",
        kind: str = NOTICE,
    ) -> None:
        self.store = store
        self.kind = kind
        self.what, self.where = WORDS[kind]
        self.owner = owner or owner_name()
        """This loop's name on the rows it claims."""
        self.send = send
        self.send_batch = send_batch
        """Sends a pass's rows in one call; None: one call per row."""
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.idle_poll = idle_poll
        self.linger = linger
        self.batch = min(batch, MAX_BATCH) if send_batch is not None else batch
        self._wake = asyncio.Event()
        self._woken = 0
        """Wakes since the loop was made: one per step that queued rows."""
        self._through = 0
        """How many of those wakes' rows the last pass that claimed all it found has been through."""
        self._passed = asyncio.Event()
        """Set (and replaced) when a pass ends: what `through` waits on."""
        self._steps = 0
        """Wakes since the last claim: at least that many steps' rows are waiting."""
        self._full = asyncio.Event()
        """Set once `batch` steps have woken the loop since its last claim: no point lingering."""
        self._delivered: list[str] = []
        """Sent by this loop and not deleted yet: its next claim (or its stop) deletes them."""
        self.delivered = 0
        """Rows delivered since the loop was made (what `OutboxMetrics` reports, with the next three)."""
        self.retries = 0
        """Passes stopped by a failure that may pass (the service away): their rows wait."""
        self.dead = 0
        """Rows refused for good, kept as dead."""
        self.failing_since: float | None = None
        """When the current run of failed passes began (`time.time()`); None while rows go out."""
        name = "trips-outbox" if kind == NOTICE else f"trips-outbox-{kind}s"
        self.task = Background(name, self._run)
        self.outage = log.Outage(_log, f"{name}: its database")

    def wake(self) -> None:
        """New rows were committed: deliver them soon (starting the loop if it is not running)."""
        self._woken += 1
        self._steps += 1
        if self._steps >= self.batch:
            self._full.set()
        self._wake.set()
        self.task.try_start()

    def in_flight(self) -> bool:
        """Whether rows this process's steps queued have not been through a pass yet (rows another
        replica queued are its own loop's)."""
        return self._through < self._woken

    async def through(self) -> None:
        """Until a pass has been through the rows this process's steps queued before now: sent them,
        or found their service away."""
        wanted = self._woken
        while self._through < wanted:
            await self._passed.wait()

    def _pass_ended(self, through: int) -> None:
        self._through = max(self._through, through)
        passed, self._passed = self._passed, asyncio.Event()
        passed.set()

    async def deliver_pending(self) -> tuple[int, bool]:
        """One pass on its own: (how many were delivered, whether it stopped on a failure that may pass)."""
        entries = await self.store.claim_outbox(self.owner, self.batch, CLAIM_SECONDS, kind=self.kind)
        delivered, failed = await self._send(entries)
        await self.store.outbox_delivered(delivered)
        return len(delivered), failed

    async def _send(self, entries: list[OutboxEntry]) -> tuple[list[str], bool]:
        """Send claimed `entries`: the ids delivered (the caller deletes them), and whether it stopped on
        a failure that may pass (then everything not delivered was given back)."""
        delivered, failed = await self._deliver(entries)
        self.delivered += len(delivered)
        if failed:
            self.failing_since = self.failing_since or time.time()
        elif entries:
            self.failing_since = None
        return delivered, failed

    async def _deliver(self, entries: list[OutboxEntry]) -> tuple[list[str], bool]:
        if self.send_batch is None or len(entries) < 2:
            return await self._one_by_one(entries)
        try:
            with continued(entries[0].traceparent):  # the batch joins the trace of its oldest step
                await self.send_batch([(entry.item, entry.id) for entry in entries])
        except grpc.aio.AioRpcError as error:
            if error.code() in PERMANENT:  # one row (at least) is bad: find it, send the others
                return await self._one_by_one(entries)
            await self._unreachable(entries, error, [])
            return [], True
        return [entry.id for entry in entries], False

    async def _one_by_one(self, entries: list[OutboxEntry]) -> tuple[list[str], bool]:
        """Send `entries` one call each, in order: a refused one is set aside, the others still go."""
        delivered: list[str] = []
        for index, entry in enumerate(entries):
            try:
                with continued(entry.traceparent):  # the delivery joins the trace of the step
                    await self.send(entry.item, entry.id)
            except grpc.aio.AioRpcError as error:
                if error.code() not in PERMANENT:
                    await self._unreachable(entries[index : index + 1], error, delivered)
                    return [], True
                text = f"{error.code().name}: {error.details()}"
                await self.store.outbox_failed([entry.id], text, dead=True)
                self.dead += 1
                _log.error(
                    f"{self.what} refused for good; kept in the outbox as dead",
                    extra={"fields": {"outbox_id": entry.id, "error": text, "trip": entry.item.trip}},
                )
                continue
            delivered.append(entry.id)
        return delivered, False

    async def _unreachable(
        self, failed: list[OutboxEntry], error: grpc.aio.AioRpcError, delivered: list[str]
    ) -> None:
        """A failure that may pass: count an attempt of the `failed` rows, delete what was `delivered`,
        give the rest back, so later rows wait behind earlier ones."""
        text = f"{error.code().name}: {error.details()}"
        self.retries += 1
        await self.store.outbox_failed([entry.id for entry in failed], text, dead=False)
        await self.store.end_claims(self.owner, delivered)
        one = {"outbox_id": failed[0].id} if len(failed) == 1 else {"rows": len(failed)}
        _log.warning(
            f"{self.where} unreachable; will retry",
            extra={"fields": {**one, "error": text, "attempts": failed[0].attempts + 1}},
        )

    async def _run(self) -> None:
        backoff = self.initial_backoff
        while True:
            self._steps = 0
            self._full.clear()
            self._wake.clear()
            woken = self._woken  # the rows of these wakes are committed: this claim sees them
            try:
                # One transaction: delete what the last pass sent, claim the next rows.
                entries = await self.store.claim_outbox(
                    self.owner, self.batch, CLAIM_SECONDS, self._delivered, self.kind
                )
                self._delivered = []
                self._delivered, failed = await self._send(entries)
            except Unavailable as error:
                if error.reason != "DATABASE_UNAVAILABLE":
                    raise
                self.outage.failed(error)
                entries, failed = [], True
            else:
                self.outage.ended()
            # A full pass may have left rows of these wakes for the next one.
            self._pass_ended(woken if len(entries) < self.batch else self._through)
            if failed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = self.initial_backoff
            if len(entries) >= self.batch:
                continue  # a full pass: more are likely waiting
            if not entries:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns normally when a
                # cancel and a wake-up arrive together, and stop() then waited for ever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.idle_poll):
                        await self._wake.wait()
                if not self._wake.is_set():
                    continue  # the poll: rows another replica or process left, claimed at once
            # Woken by a step, or just sent: let the steps of the next few ms join this claim.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.linger):
                    await self._full.wait()

    def start(self) -> None:
        self.task.start()

    async def stop(self) -> None:
        """Stop the loop and give back what it claimed, for another replica to send at once."""
        await self.task.stop()
        try:
            await self.store.end_claims(self.owner, self._delivered)
        except Exception as error:  # the database away: the claims expire instead
            _log.warning(f"could not give back claimed {self.what}s", extra={"fields": {"error": str(error)}})


class OutboxMetrics:
    """The loops' counts on /metrics, by kind: a prometheus-client custom collector, read when /metrics
    is (on the admin server's thread: plain numbers the loops update on the event loop, each read whole).

    `trips_outbox_delivered_total`, `trips_outbox_retries_total`, `trips_outbox_dead_total` and
    `trips_outbox_failing_seconds` (0 while rows go out).
    """

    def __init__(self, loops: Sequence[Outbox]) -> None:
        self.loops = loops

    def collect(self) -> Iterator[Metric]:
        labels = ["kind"]
        delivered = CounterMetricFamily("trips_outbox_delivered", "Outbox rows delivered.", labels=labels)
        retries = CounterMetricFamily(
            "trips_outbox_retries",
            "Outbox passes that found the service away; their rows wait.",
            labels=labels,
        )
        dead = CounterMetricFamily("trips_outbox_dead", "Outbox rows refused for good.", labels=labels)
        failing = GaugeMetricFamily(
            "trips_outbox_failing_seconds",
            "How long deliveries have been failing; 0 while they go out.",
            labels=labels,
        )
        now = time.time()
        for loop in self.loops:
            delivered.add_metric([loop.kind], loop.delivered)
            retries.add_metric([loop.kind], loop.retries)
            dead.add_metric([loop.kind], loop.dead)
            since = loop.failing_since
            failing.add_metric([loop.kind], 0.0 if since is None else now - since)
        yield from (delivered, retries, dead, failing)
