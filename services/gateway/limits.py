"""What the bridge refuses when it is full: calls past the in-flight cap, streams past a caller's cap.

`InFlight` bounds the unary calls the bridge has upstream at once. A call past
the cap waits its turn, in order, for as long as it can afford: at most
`max_queue_wait`, and never past the caller's deadline. One that could not
start in that time is refused at once with 503 and `Retry-After`: the wait
ahead of it is estimated from the queue's length and how long a call holds
its slot, so under overload the refusals are fast and the calls admitted keep
a bounded latency, instead of every caller waiting in an unbounded queue
(issue 11: open-loop load at twice the capacity gave p50 9 s, p99 31 s).

Past capacity the gateway finishes work before it starts more. A call whose
route names an existing resource continues work already admitted
(`POST /v1/{name=trips/*}:cancel`: the ride holds a driver until it ends);
any other starts new work (`POST /v1/trips`); the route table decides which,
once per route (`routes.Binding.continues`). New work takes a slot only while
a quarter of the slots (`reserve`) stays free for continuing work, which may
take all of them; a freed slot goes to the first continuing call waiting, and
to a new one only if none waits and the reserve is free. So under overload
the excess refused is new work, and a refusal never strands a ride half done
(measured before: at twice the capacity ~870 of ~2,900 refusals were
CancelTrips, and 100-140 drivers were left on a trip). A call's wait ahead
counts only those that go before it: continuing calls waiting, over all the
slots, for a continuing call; everyone waiting, over the slots new work may
use, for a new one.

`InFlight` alone cannot see the wait before a request is read: when the
gateway's own CPU is the bottleneck, requests queue in the kernel's socket
buffers and the event loop reads them ever later (measured: admitted p99 of
1-2 s at twice the capacity, with the in-flight cap never reached). `LoopLag`
measures that wait as how late the loop runs a timer; while it exceeds
`max_lag`, new calls are refused before anything else is done for them
(no key lookup, no body), so the loop catches up and the calls it admits keep
a bounded latency.

`StreamCaps` bounds the streams open at once per owner (an API key, and later
the end user a key acts for): past it 429 with `Retry-After`. A stream lasts as
long as its client listens, so without a cap one key could hold thousands.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence

import grpc

from services.runtime import log

from .errors import HttpError

_log = log.get_logger("rideshare.gateway")

RETRY_AFTER = 1
"""Seconds a refused caller is told to wait (`Retry-After`)."""
WARN_INTERVAL = 10.0
"""Seconds between two warnings about what the limits refused."""
_SMOOTHING = 0.05
"""Weight of the latest call in the running mean of how long a call holds its slot."""
LAG_TICK = 0.005
"""Seconds between two looks at how late the event loop runs."""
_LAG_WEIGHT = 0.5
"""Weight of the latest look in the running lag: one stall moves it half way, a flood all the way."""


class InFlight:
    """At most `limit` calls upstream at once, new work at most `limit - reserve`; the rest wait in
    order, continuing work first, while they can afford to."""

    def __init__(self, limit: int, max_wait: float) -> None:
        self.limit = limit
        self.max_wait = max_wait
        self.reserve = limit // 4
        """Slots new work leaves free for continuing work."""
        self.busy = 0
        self.holding = 0.0
        """Running mean of the seconds a call holds its slot."""
        self._continuing: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._new: collections.deque[asyncio.Future[bool]] = collections.deque()
        self.waiting_continuing = 0
        self.waiting_new = 0

    @property
    def waiting(self) -> int:
        return self.waiting_continuing + self.waiting_new

    def try_enter(self, continues: bool) -> bool:
        """Take a free slot if there is one for this kind of call (the common case: no coroutine,
        no clock)."""
        if self.busy < (self.limit if continues else self.limit - self.reserve):
            self.busy += 1
            return True
        return False

    def check(self, budget: float | None, continues: bool) -> None:
        """HttpError 503 now if a call arriving now could not start within `budget` (the
        caller's deadline) or `max_wait`: called before the request body is read and decoded,
        so a refusal costs as little as it can."""
        if self.busy >= (self.limit if continues else self.limit - self.reserve):
            self._afford(budget, continues)

    async def wait(self, budget: float | None, continues: bool) -> float:
        """Wait for a slot, at most `budget` seconds (the caller's deadline) and `max_wait`; the
        seconds waited. HttpError 503 at once if the wait ahead is already longer."""
        wait = self._afford(budget, continues)
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[bool] = loop.create_future()
        if continues:
            self._continuing.append(turn)
            self.waiting_continuing += 1
        else:
            self._new.append(turn)
            self.waiting_new += 1
        started = time.monotonic()
        timer = loop.call_later(wait, _expire, turn)
        try:
            granted = await turn
        except asyncio.CancelledError:  # the client went away while waiting
            if turn.done() and not turn.cancelled() and turn.result():
                self.leave(None)  # the slot it was just given goes to the next one
            raise
        finally:
            timer.cancel()
            if continues:
                self.waiting_continuing -= 1
            else:
                self.waiting_new -= 1
        if not granted:
            raise self._overloaded(wait, continues)
        return time.monotonic() - started

    def _afford(self, budget: float | None, continues: bool) -> float:
        """The longest this call may wait; HttpError 503 if the wait ahead of it is longer."""
        wait = self.max_wait if budget is None else min(self.max_wait, budget)
        if continues:
            ahead = (self.waiting_continuing + 1) * self.holding / self.limit
        else:
            ahead = (self.waiting + 1) * self.holding / (self.limit - self.reserve)
        if wait <= 0 or ahead > wait:
            raise self._overloaded(wait, continues)
        return wait

    def leave(self, since: float | None) -> None:
        """Give the slot back: to the first continuing call waiting, else to the first new one if
        the reserve stays free, else free it; `since`: when the call took it."""
        if since is not None:
            self.holding += (time.monotonic() - since - self.holding) * _SMOOTHING
        if _hand_over(self._continuing):
            return
        if self.busy - 1 < self.limit - self.reserve and _hand_over(self._new):
            return
        self.busy -= 1

    def _overloaded(self, wait: float, continues: bool) -> HttpError:
        if continues or not self.reserve:
            full = f"the gateway has {self.limit} calls in flight"
        else:
            full = (
                f"the gateway has the {self.limit - self.reserve} calls in flight it allows new work "
                f"(it keeps {self.reserve} more for calls on existing resources)"
            )
        return HttpError(
            503,
            grpc.StatusCode.UNAVAILABLE,
            f"{full} and could not start this one within {wait * 1000:.0f} ms; retry in {RETRY_AFTER} s",
            reason="OVERLOADED",
            retry_after=RETRY_AFTER,
        )


def _hand_over(queue: collections.deque[asyncio.Future[bool]]) -> bool:
    """Give a slot to the first call in `queue` still waiting; False if none is."""
    while queue:
        turn = queue.popleft()
        if not turn.done():
            turn.set_result(True)
            return True
    return False


class LoopLag:
    """How late the event loop runs its timers: how long a request read now has waited to be read.

    A timer is due every `LAG_TICK`; how late it fires is the time the loop spent on
    other callbacks first. The lag is a running mean of those looks, so a single
    pause (a garbage collection, the host not scheduling us) counts for half and
    a sustained backlog for all of it. Started on the first request (it needs the
    running loop); costs one callback per tick.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        """Seconds; 0: never refuse."""
        self.late = 0.0
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def check(self) -> None:
        """HttpError 503 now if the loop runs later than `limit`: what is read now has already
        waited that long, and the loop must catch up before it takes more."""
        if self.late > self.limit > 0:
            raise HttpError(
                503,
                grpc.StatusCode.UNAVAILABLE,
                f"the gateway is {self.late * 1000:.0f} ms behind, more than its "
                f"{self.limit * 1000:.0f} ms limit; retry in {RETRY_AFTER} s",
                reason="OVERLOADED",
                retry_after=RETRY_AFTER,
            )

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + LAG_TICK
        self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        late = self._loop.time() - self._due
        self.late += (late - self.late) * _LAG_WEIGHT
        self._schedule()


def _expire(turn: asyncio.Future[bool]) -> None:
    if not turn.done():
        turn.set_result(False)


class StreamCaps:
    """Open streams per owner, each owner at most `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def enter(self, owners: Sequence[str]) -> None:
        """Count a new stream against every owner, or HttpError 429 naming the one at its cap."""
        for owner in owners:
            if self.open.get(owner, 0) >= self.limit:
                raise HttpError(
                    429,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{owner} has {self.limit} streams open, its limit; close one, or retry later",
                    reason="TOO_MANY_STREAMS",
                    retry_after=RETRY_AFTER,
                )
        for owner in owners:
            self.open[owner] = self.open.get(owner, 0) + 1

    def leave(self, owners: Sequence[str]) -> None:
        for owner in owners:
            left = self.open[owner] - 1
            if left:
                self.open[owner] = left
            else:
                del self.open[owner]


class Refusals:
    """What the limits refused, as one warning line at once and then at most one per 10 s.

    Under a flood a line per refusal is thousands of lines a second, each ~17 us of CPU
    (docs/threat-model.md) spent when the gateway has none to spare. The access log has
    these at debug level.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.counts: dict[str, int] = {}
        self._warned = -WARN_INTERVAL

    def count(self, error: HttpError) -> None:
        reason = error.reason or str(error.status)
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._warned >= WARN_INTERVAL:
            self._warned = now
            counts = ", ".join(f"{reason} {count}" for reason, count in sorted(self.counts.items()))
            _log.warning(
                f"{self.what} refused since the last line: {counts}",
                extra={"fields": {"event": "refusals", **self.counts}},
            )
            self.counts = {}
