"""The trip steps that span services: matching a driver, completing, cancelling (and the local ones).

Each step is written so that repeating it, with the same request_id, after
any failure finishes it exactly once; see the package docstring for the
recovery design. Steps on one trip run one at a time, across every replica
sharing the database (`KeyedLocks`: an asyncio lock, then the store's hold:
PostgreSQL's advisory lock or a byte of SQLite's lock file), so e.g. a StartTrip cannot
slip between CancelTrip freeing the driver and recording the cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from rideshare.drivers.v1.drivers_pb2 import Driver
from rideshare.trips.v1.trips_pb2 import (
    AcceptTripRequest,
    CancelTripRequest,
    CompleteTripRequest,
    RequestTripRequest,
    StartTripRequest,
    Trip,
)

from services.runtime import log
from services.runtime.aip import resource_id
from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.runtime.resources import fingerprint

from . import domain, notices
from .clients import Downstream
from .outbox import Outbox
from .store import Item, Matching, Release, TripStore

_log = log.get_logger("rideshare.trips.workflow")

RELEASES_WAIT = 0.5
"""How long RequestTrip, finding no driver, waits for this process's releases in flight to go out
(a pass is ~10 ms; while drivers is away the outbox backs off, and the answer is NO_DRIVER_AVAILABLE)."""


class Holds(Protocol):
    """Holding a key against the other replicas sharing the database (the trips store's `hold`)."""

    def hold(self, key: str) -> AbstractAsyncContextManager[None]: ...


StepRequest = AcceptTripRequest | StartTripRequest | CompleteTripRequest | CancelTripRequest
Allowed = Callable[[Trip], None]
"""Whether the caller may take a step on a trip (the servicer's rule of who owns it): raises the
refusal, checked by the step on the trip it holds, so the trip is read once."""


def anyone(trip: Trip) -> None:
    """A step taken on the service's own behalf (tests, the mesh): no one to refuse."""


class KeyedLocks:
    """One lock per key, across the replicas: an asyncio lock for this process's own tasks,
    then the store's hold on the key for the other processes (PostgreSQL's advisory lock,
    a byte of SQLite's lock file).

    The asyncio lock comes first, so a process waits on the database for a key
    with one task at most. A wait is bounded by the caller's deadline (the call is
    cancelled then). The asyncio locks are dropped when nobody holds or waits for them.
    """

    def __init__(self, store: Holds | None = None) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._store = store

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                if self._store is None:
                    yield
                else:
                    async with self._store.hold(key):
                        yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


def no_driver_available(trip: Trip | RequestTripRequest) -> FailedPrecondition:
    return FailedPrecondition(
        "no driver is available near the pickup; try again in a moment",
        reason="NO_DRIVER_AVAILABLE",
        metadata={"latitude": f"{trip.pickup.latitude:.6f}", "longitude": f"{trip.pickup.longitude:.6f}"},
    )


def _request_id_reused(request_id: str) -> InvalidArgument:
    return InvalidArgument.field(
        "request_id",
        f"{request_id!r} was already used for a different RequestTrip request",
        reason="REQUEST_ID_REUSED",
    )


class TripWorkflow:
    """Runs the steps of a trip against the store and the other services."""

    def __init__(
        self,
        store: TripStore,
        downstream: Downstream,
        outbox: Outbox,
        releases: Outbox,
        search_radius: float,
    ) -> None:
        self.store = store
        self.downstream = downstream
        self.outbox = outbox
        """Sends the notifications the steps queue."""
        self.releases = releases
        """Sends the drivers' releases the steps that end a trip queue."""
        self.search_radius = search_radius
        self.locks = KeyedLocks(store)

    # --- RequestTrip --------------------------------------------------------------

    async def request(self, request: RequestTripRequest) -> Trip:
        domain.check_request(request)
        if not request.request_id:
            return await self._match(request, None)
        async with self.locks.hold(f"request:{request.request_id}"):
            # Looked up once, under the lock: a repeat answered meanwhile (or long ago) is found
            # here, and a first request, the common case, reads the request log once.
            replay = await self.store.replayed(request)
            if replay is not None:
                return replay
            matching = await self.store.matching_by_key(request.request_id)
            if matching is not None and matching.fingerprint != fingerprint(request):
                raise _request_id_reused(request.request_id)
            return await self._match(request, matching)

    async def _match(self, request: RequestTripRequest, matching: Matching | None) -> Trip:
        """Give the trip its driver, or resume doing so; the trip is kept MATCHING until it has one.

        One call to drivers (AssignNearestDriver) finds and takes the nearest
        AVAILABLE driver; a driver taken by another trip meanwhile is drivers'
        business (it takes the next). Only the MATCHING trip is written before
        the call, no candidate: the call is idempotent by the trip, so a repeat
        after any failure asks again and gets the driver the first call took, if
        it took one, never a second.
        """
        fresh = matching is None
        if matching is None:
            # Both are reads: side by side, a ride waits for the slower one, not for both.
            _, quote = await asyncio.gather(
                self.downstream.get_passenger(request.passenger),
                self.downstream.quote_fare(request.pickup, request.dropoff),
            )
            trip = domain.new_trip(request, quote)
            matching = await self.store.add_matching(trip, request.request_id, fingerprint(request))
        async with self.locks.hold(matching.id):
            # A trip written a moment ago is as written: only the janitor also holds MATCHING
            # trips, and it drops only those untouched for `matching_timeout_seconds`.
            current = matching if fresh else await self.store.matching(matching.id)
            if current is None:
                # The janitor gave this attempt up (and freed its driver) while we waited: start afresh.
                return await self._match(request, None)
            trip = current.trip
            driver = await self._driver_of(trip)
            if driver is None and self.releases.in_flight():
                # Trips that ended a moment ago are still freeing their drivers (the outbox sends a
                # release a linger after the answer): those drivers are free, so ask once more.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RELEASES_WAIT):
                        await self.releases.through()
                driver = await self._driver_of(trip)
            if driver is None:
                await self.store.drop_matching(current.id)
                raise no_driver_available(trip)
            return await self._assigned(request, current, driver)

    async def _driver_of(self, trip: Trip) -> Driver | None:
        """The trip's driver: the one it has, else the nearest AVAILABLE, taken now; None if none is."""
        return await self.downstream.assign_nearest_driver(trip.name, trip.pickup, self.search_radius)

    async def _assigned(self, request: RequestTripRequest, matching: Matching, driver: Driver) -> Trip:
        trip = await self.store.finish_matching(
            matching, driver.name, request, lambda assigned: notices.assigned(assigned, driver)
        )
        self.outbox.wake()
        return trip

    async def sweep_abandoned(self, older_than: float, limit: int = 100) -> int:
        """Give up matching attempts nobody resumed: free the driver they may hold, forget the trip.

        A MATCHING trip untouched for `older_than` seconds belongs to a RequestTrip
        that failed (a dependency down, a crash) and was not repeated. Drivers may
        have given it a driver before the failure (AssignNearestDriver committed,
        the answer lost), and only drivers knows which: the janitor asks again,
        with the same call (idempotent by the trip, it returns the driver the trip
        has) and releases what it returns. Why not a ReleaseTrip by trip: that
        would be a second way into the drivers' contract for this rare path alone;
        the price of reusing the match is that, for a trip that never got a driver,
        the nearest free one is taken and given back at once (two writes in
        drivers, a moment the driver is not AVAILABLE). Then the invisible trip is
        deleted and the driver's release queued, in one transaction, and the outbox
        frees the driver as it does at a trip's end; a late repeat of the request
        starts afresh. A failure on the way leaves the trip MATCHING, and the next
        sweep repeats it to the same end.
        """
        before = time.time_ns() - int(older_than * 1e9)
        swept = 0
        for stale in await self.store.stale_matching(before, limit):
            async with self.locks.hold(stale.id):
                current = await self.store.matching(stale.id)
                if current is None or current.update_ns >= before:
                    continue
                trip = current.trip
                driver = await self._driver_of(trip)
                release = Release(driver.name, trip.name) if driver else None
                await self.store.drop_matching(stale.id, release)
                if release:
                    self.releases.wake()
                swept += 1
                _log.warning(
                    "gave up an abandoned trip request",
                    extra={"fields": {"trip": trip.name, "driver": driver.name if driver else ""}},
                )
        return swept

    # --- the local steps -----------------------------------------------------------

    async def _held(self, request: StepRequest, allowed: Allowed) -> tuple[Trip, Trip | None]:
        """The trip a step holds, once the caller may take the step on it, and the stored answer
        to a repeat of `request` (None for a first). Read once, under the hold: nothing else
        changes a held trip, so the step writes from it without reading it again."""
        trip = await self.store.get(request.name)
        allowed(trip)  # before the replay: another's request_id must tell a stranger nothing
        return trip, await self.store.replayed(request)

    async def accept(self, request: AcceptTripRequest, allowed: Allowed = anyone) -> Trip:
        trip_id = resource_id(request.name, "trips")
        async with self.locks.hold(trip_id):
            trip, replay = await self._held(request, allowed)
            if replay is not None:
                return replay
            trip = await self.store.transition(
                trip_id, request, lambda t: _with(domain.accept(t), notices.accepted), trip
            )
        self.outbox.wake()
        return trip

    async def start(self, request: StartTripRequest, allowed: Allowed = anyone) -> Trip:
        trip_id = resource_id(request.name, "trips")
        async with self.locks.hold(trip_id):
            trip, replay = await self._held(request, allowed)
            if replay is not None:
                return replay
            trip = await self.store.transition(
                trip_id, request, lambda t: _with(domain.start(t), notices.started), trip
            )
        self.outbox.wake()
        return trip

    # --- CompleteTrip and CancelTrip ----------------------------------------------

    async def complete(self, request: CompleteTripRequest, allowed: Allowed = anyone) -> Trip:
        """Invoice, charge, free the driver, then COMPLETED; each step recorded as it succeeds."""
        trip_id = resource_id(request.name, "trips")
        async with self.locks.hold(trip_id):
            trip, replay = await self._held(request, allowed)
            if replay is not None:
                return replay
            domain.check_completable(trip)
            dropoff_ns = await self.store.fix_dropoff(trip_id)
            if not trip.invoice:
                invoice = await self.downstream.create_invoice(
                    domain.invoice_for(trip, dropoff_ns), domain.invoice_request_id(trip.name)
                )
                _refuse_if(domain.invoice_mismatch(trip, invoice))
                trip = await self.store.record_invoice(trip_id, invoice.name)
            if not trip.payment:
                payment = await self.downstream.create_payment(
                    domain.payment_for(trip), domain.payment_request_id(trip.name)
                )
                _refuse_if(domain.payment_mismatch(trip, payment))
                trip = await self.store.record_payment(trip_id, payment.name, domain.payment_state(payment))
            done = await self.store.transition(
                trip_id,
                request,
                lambda t: _ended(domain.complete(t, dropoff_ns), notices.completed),
                trip,
            )
        self._ended()
        return done

    async def cancel(self, request: CancelTripRequest, allowed: Allowed = anyone) -> Trip:
        """CANCELLED, with the driver's release queued in the same transaction."""
        domain.check_cancel_reason(request.reason)
        trip_id = resource_id(request.name, "trips")
        async with self.locks.hold(trip_id):
            trip, replay = await self._held(request, allowed)
            if replay is not None:
                return replay
            domain.check_cancellable(trip)
            done = await self.store.transition(
                trip_id,
                request,
                lambda t: _ended(domain.cancel(t, request.reason), notices.cancelled),
                trip,
            )
        self._ended()
        return done

    def _ended(self) -> None:
        """A trip ended: its driver's release and its notifications were queued."""
        self.releases.wake()
        self.outbox.wake()


def _refuse_if(mismatch: FailedPrecondition | None) -> None:
    """Stop a completion that would adopt money other than the fare, and tell the operator.

    The invoice or payment in question is not recorded on the trip, which stays
    IN_PROGRESS as it was; the log line and the error name both amounts.
    """
    if mismatch is None:
        return
    _log.error(
        f"refused to complete a trip: {mismatch.message}",
        extra={"fields": {"event": "money_mismatch", "reason": mismatch.reason, **mismatch.metadata}},
    )
    raise mismatch


def _with(trip: Trip, make: Callable[[Trip], list[notices.Notice]]) -> tuple[Trip, Sequence[Item]]:
    """The changed trip and what to tell people about it."""
    return trip, make(trip)


def _ended(trip: Trip, make: Callable[[Trip], list[notices.Notice]]) -> tuple[Trip, list[Item]]:
    """The trip that ended, its driver to release, and what to tell people about it."""
    return trip, [Release(trip.driver, trip.name), *make(trip)]
