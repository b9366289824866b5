"""The trip workflow against scripted neighbours: races, crashes and outages, made exact.

The integration tests run the real services; these make the failures that a
real mesh cannot produce on cue (a crash between two steps, a driver lost to a
race) and check that a retry finishes the work exactly once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

import grpc
import psycopg
import pytest
from google.type.latlng_pb2 import LatLng
from google.type.money_pb2 import Money
from rideshare.billing.v1.billing_pb2 import Invoice
from rideshare.drivers.v1.drivers_pb2 import Driver
from rideshare.payments.v1.payments_pb2 import Payment, PaymentState
from rideshare.trips.v1.trips_pb2 import (
    AcceptTripRequest,
    CancelTripRequest,
    CompleteTripRequest,
    ListTripsRequest,
    StartTripRequest,
    Trip,
)

from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.runtime.storage import SqliteBackend
from services.trips import domain
from services.trips.outbox import Outbox
from services.trips.store import MIGRATIONS, RELEASE, Release, TripStore
from services.trips.workflow import KeyedLocks, TripWorkflow

from ..mesh.test_storage import held_elsewhere
from .test_domain import quote, request


class Neighbours:
    """The five other services, in memory, each write idempotent on its request_id like the real ones."""

    def __init__(self) -> None:
        self.passengers = {"passengers/p1"}
        self.drivers: dict[str, str] = {"drivers/near": "", "drivers/far": ""}
        self.down: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.invoices: dict[str, Invoice] = {}
        self.payments: dict[str, Payment] = {}
        self.sent: list[str] = []
        self.freed = asyncio.Event()
        """Set when a driver is released."""
        self.refused = asyncio.Event()
        """Set when the outbox's release met drivers down."""

    def _reach(self, service: str, method: str, key: str = "") -> None:
        if service in self.down:
            raise Unavailable(f"{service} is down", metadata={"service": service})
        self.calls.append((method, key))

    async def get_passenger(self, name: str) -> object:
        self._reach("passengers", "GetPassenger")
        if name not in self.passengers:
            raise NotFound(f"{name} does not exist", reason="PASSENGER_NOT_FOUND")
        return object()

    async def quote_fare(self, pickup: LatLng, dropoff: LatLng) -> Any:
        self._reach("billing", "QuoteFare")
        return quote()

    async def assign_nearest_driver(self, trip: str, pickup: LatLng, radius: float) -> Driver | None:
        """Idempotent by the trip, like the real one: the driver the trip has, else the nearest free
        one (the first free in `drivers`), taken now; None if every driver is taken."""
        self._reach("drivers", "AssignNearestDriver", trip)
        held = next((name for name, on in self.drivers.items() if on == trip), None)
        if held is None:
            held = next((name for name, on in self.drivers.items() if not on), None)
            if held is None:
                return None
            self.drivers[held] = trip
        return Driver(name=held, display_name="Dana")

    async def release_trip(self, driver: str, trip: str, request_id: str) -> None:
        self._reach("drivers", "ReleaseTrip", request_id)
        if self.drivers.get(driver) == trip:
            self.drivers[driver] = ""
            self.freed.set()

    async def create_invoice(self, invoice: Invoice, request_id: str) -> Invoice:
        """Billing prices every ride here at the quote's fare, as the real one prices the trip's places."""
        self._reach("billing", "CreateInvoice", request_id)
        if request_id not in self.invoices:
            self.invoices[request_id] = Invoice(
                name=f"invoices/{len(self.invoices)}",
                trip=invoice.trip,
                passenger=invoice.passenger,
                amount=quote().fare,
            )
        return self.invoices[request_id]

    async def create_payment(self, payment: Payment, request_id: str) -> Payment:
        """Payments charges the invoice's amount."""
        self._reach("payments", "CreatePayment", request_id)
        if request_id not in self.payments:
            ok = payment.payment_method == "pm_card_visa"
            state = PaymentState.PAYMENT_STATE_SUCCEEDED if ok else PaymentState.PAYMENT_STATE_DECLINED
            amount = next(i.amount for i in self.invoices.values() if i.name == payment.invoice)
            self.payments[request_id] = Payment(
                name=f"payments/{len(self.payments)}", invoice=payment.invoice, amount=amount, state=state
            )
        return self.payments[request_id]

    async def send_notification(self, notice: Any, request_id: str) -> None:
        self.sent.append(notice.title)

    async def send_release(self, release: Release, request_id: str) -> None:
        """The outbox's ReleaseTrip, failing as a gRPC call does (the outbox retries UNAVAILABLE)."""
        if "drivers" in self.down:
            self.refused.set()
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "drivers is down"
            )
        await self.release_trip(release.driver, release.trip, request_id)

    async def released(self, driver: str) -> None:
        """Until the outbox has released `driver` (it runs beside the workflow, on the same loop)."""
        async with asyncio.timeout(WAIT):
            while self.drivers[driver]:
                self.freed.clear()
                await self.freed.wait()


Scenario = Callable[[TripWorkflow, Neighbours], Awaitable[None]]
WAIT = 10.0
"""A bound on waiting for a lock that must come, so a broken lock fails the test instead of hanging it."""


@pytest.fixture
def store(backends) -> TripStore:
    """The trip store on a fresh database, once per engine."""
    return TripStore(backends.open(MIGRATIONS))


def run(runner, store, scenario: Scenario, neighbours: Neighbours | None = None) -> Neighbours:
    """Run `scenario` with a workflow on `store` and fresh (or given) neighbours, stopping the outbox."""
    neighbours = neighbours or Neighbours()

    async def main() -> None:
        outbox = Outbox(store, neighbours.send_notification)
        releases = Outbox(store, neighbours.send_release, kind=RELEASE)
        workflow = TripWorkflow(store, neighbours, outbox, releases, 5000.0)  # type: ignore[arg-type]
        try:
            await scenario(workflow, neighbours)
        finally:
            await outbox.stop()
            await releases.stop()
        assert len(workflow.locks) == 0, "every lock is released"

    runner.run(main())
    return neighbours


def visible(runner, store) -> list[Trip]:
    return runner.run(store.list(ListTripsRequest(page_size=100))).items


def test_the_nearest_driver_is_assigned_and_told(runner, store):
    mesh, told = Neighbours(), asyncio.Event()
    send = mesh.send_notification

    async def send_and_count(notice: Any, request_id: str) -> None:
        await send(notice, request_id)
        if len(mesh.sent) == 2:
            told.set()

    mesh.send_notification = send_and_count  # type: ignore[method-assign]

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        trip = await workflow.request(request(request_id="r1"))
        assert trip.state == domain.DRIVER_ASSIGNED
        assert trip.driver == "drivers/near"
        assert mesh.drivers["drivers/near"] == trip.name
        # One call to drivers: the nearest is found and taken at once.
        assert sorted(mesh.calls) == [
            ("AssignNearestDriver", trip.name),
            ("GetPassenger", ""),
            ("QuoteFare", ""),
        ]
        # The outbox runs beside the workflow: when the request returns it may have told one
        # party, both or none (asserting a snapshot of that raced it in CI), so wait for both.
        async with asyncio.timeout(WAIT):
            await told.wait()
        assert sorted(mesh.sent) == ["Driver assigned", "New trip"]

    run(runner, store, scenario, mesh)


def test_no_driver_means_no_trip(runner, store):
    mesh = Neighbours()
    mesh.drivers = {}

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        with pytest.raises(FailedPrecondition) as error:
            await workflow.request(request(request_id="r1"))
        assert error.value.reason == "NO_DRIVER_AVAILABLE"

    run(runner, store, scenario, mesh)
    assert visible(runner, store) == []
    assert runner.run(store.stale_matching(2**62, 10)) == []


def test_riders_requesting_at_once_all_get_a_driver_while_any_is_free(runner, store):
    mesh = Neighbours()
    mesh.drivers = {f"drivers/d{n:02}": "" for n in range(30)}

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        trips = await asyncio.gather(*(workflow.request(request()) for _ in range(30)))
        assert sorted(trip.driver for trip in trips) == sorted(mesh.drivers)
        assert all(mesh.drivers[trip.driver] == trip.name for trip in trips)
        with pytest.raises(FailedPrecondition) as error:
            await workflow.request(request())
        assert error.value.reason == "NO_DRIVER_AVAILABLE"

    run(runner, store, scenario, mesh)
    assert len(visible(runner, store)) == 30
    assert runner.run(store.stale_matching(2**62, 10)) == []


def test_an_unknown_passenger_is_not_found_and_no_driver_is_taken(runner, store):
    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        with pytest.raises(NotFound) as error:
            await workflow.request(request(passenger="passengers/nobody"))
        assert error.value.reason == "PASSENGER_NOT_FOUND"
        assert "AssignNearestDriver" not in [method for method, _ in mesh.calls]
        assert set(mesh.drivers.values()) == {""}

    run(runner, store, scenario)
    assert runner.run(store.stale_matching(2**62, 10)) == []


def test_a_crash_after_the_driver_said_yes_is_resumed_by_the_retry(runner, store):
    """The driver is ON_TRIP but the trip was not recorded: the retry finds it, never a second driver."""
    finish = store.finish_matching
    crashes = [RuntimeError("crash before the trip was recorded")]

    async def crash_once(*args: Any, **kwargs: Any) -> Trip:
        if crashes:
            raise crashes.pop()
        return await finish(*args, **kwargs)

    store.finish_matching = crash_once

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        with pytest.raises(RuntimeError):
            await workflow.request(request(request_id="r1"))
        held = [name for name, trip in mesh.drivers.items() if trip]
        assert held == ["drivers/near"]
        assert (await store.list(ListTripsRequest())).items == []

        trip = await workflow.request(request(request_id="r1"))
        assert trip.driver == "drivers/near"
        assert mesh.drivers["drivers/near"] == trip.name
        assert mesh.drivers["drivers/far"] == ""
        assert await workflow.request(request(request_id="r1")) == trip

    run(runner, store, scenario)
    assert len(visible(runner, store)) == 1


def test_a_driver_service_outage_mid_request_is_resumed_by_the_retry(runner, store):
    mesh = Neighbours()
    original = mesh.assign_nearest_driver

    async def down_after_assigning(trip: str, pickup: LatLng, radius: float) -> Driver | None:
        await original(trip, pickup, radius)
        mesh.down.add("drivers")
        raise Unavailable("drivers is down")  # the answer is lost

    mesh.assign_nearest_driver = down_after_assigning  # type: ignore[method-assign]

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        with pytest.raises(Unavailable):
            await workflow.request(request(request_id="r1"))
        mesh.assign_nearest_driver = original  # type: ignore[method-assign]
        with pytest.raises(Unavailable):
            await workflow.request(request(request_id="r1"))
        mesh.drivers = {"drivers/nearer": "", **mesh.drivers}  # a nearer driver came online meanwhile
        mesh.down.clear()
        trip = await workflow.request(request(request_id="r1"))
        assert trip.driver == "drivers/near", "the driver the lost answer took, never a second"
        assert mesh.drivers == {"drivers/nearer": "", "drivers/near": trip.name, "drivers/far": ""}
        assert [key for method, key in mesh.calls if method == "AssignNearestDriver"] == [trip.name] * 2

    run(runner, store, scenario, mesh)


def test_a_reused_request_id_is_refused_even_while_matching(runner, store):
    mesh = Neighbours()

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        original = mesh.assign_nearest_driver

        async def lost(trip: str, pickup: LatLng, radius: float) -> Driver | None:
            raise Unavailable("drivers is down")

        mesh.assign_nearest_driver = lost  # type: ignore[method-assign]
        with pytest.raises(Unavailable):
            await workflow.request(request(request_id="r1"))
        mesh.assign_nearest_driver = original  # type: ignore[method-assign]
        with pytest.raises(InvalidArgument) as error:
            await workflow.request(request(request_id="r1", payment_method="pm_card_declined"))
        assert error.value.reason == "REQUEST_ID_REUSED"

    run(runner, store, scenario, mesh)


def test_concurrent_repeats_of_one_request_make_one_trip(runner, store):
    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        trips = await asyncio.gather(*(workflow.request(request(request_id="r1")) for _ in range(5)))
        assert len({t.name for t in trips}) == 1
        assert trips[0] == trips[-1]

    run(runner, store, scenario)
    assert len(visible(runner, store)) == 1


def test_a_repeat_after_the_answer_gets_the_same_trip_and_calls_no_other_service(runner, store):
    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        first = await workflow.request(request(request_id="r1"))
        calls = list(mesh.calls)
        assert await workflow.request(request(request_id="r1")) == first
        assert mesh.calls == calls

    run(runner, store, scenario)
    assert len(visible(runner, store)) == 1


def test_the_janitor_frees_the_driver_of_an_abandoned_request(runner, store):
    mesh = Neighbours()
    original = mesh.assign_nearest_driver

    async def lost(trip: str, pickup: LatLng, radius: float) -> Driver | None:
        await original(trip, pickup, radius)  # assigned, but the answer never came back
        raise Unavailable("drivers is down")

    mesh.assign_nearest_driver = lost  # type: ignore[method-assign]

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        with pytest.raises(Unavailable):
            await workflow.request(request(request_id="r1"))
        (abandoned,) = await store.stale_matching(2**62, 10)
        assert mesh.drivers["drivers/near"] == abandoned.trip.name
        mesh.assign_nearest_driver = original  # type: ignore[method-assign]
        assert await workflow.sweep_abandoned(older_than=3600) == 0, "a recent attempt is left alone"
        await asyncio.sleep(0.01)
        assert await workflow.sweep_abandoned(older_than=0.001) == 1
        assert await store.stale_matching(2**62, 10) == []
        await mesh.released("drivers/near")  # by the outbox, as at a trip's end
        assert mesh.drivers == {"drivers/near": "", "drivers/far": ""}
        assert mesh.calls[-2:] == [
            ("AssignNearestDriver", abandoned.trip.name),
            ("ReleaseTrip", f"{abandoned.trip.name}:release"),
        ]

        trip = await workflow.request(request(request_id="r1"))
        assert trip.state == domain.DRIVER_ASSIGNED, "a late repeat starts afresh"
        assert trip.name != abandoned.trip.name

    run(runner, store, scenario, mesh)


def test_the_janitor_gives_back_at_once_a_driver_an_abandoned_request_never_got(runner, store):
    mesh = Neighbours()

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        mesh.down.add("drivers")
        with pytest.raises(Unavailable):
            await workflow.request(request(request_id="r1"))
        mesh.down.clear()
        await asyncio.sleep(0.01)
        assert await workflow.sweep_abandoned(older_than=0.001) == 1
        await mesh.released("drivers/near")
        assert mesh.drivers == {"drivers/near": "", "drivers/far": ""}
        assert [method for method, _ in mesh.calls][-2:] == ["AssignNearestDriver", "ReleaseTrip"]

    run(runner, store, scenario, mesh)


def test_the_janitor_keeps_an_abandoned_request_while_drivers_is_down(runner, store):
    mesh = Neighbours()
    mesh.down.add("drivers")

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        with pytest.raises(Unavailable):
            await workflow.request(request(request_id="r1"))
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable):
            await workflow.sweep_abandoned(older_than=0.001)
        assert len(await store.stale_matching(2**62, 10)) == 1, "kept for the next sweep"

    run(runner, store, scenario, mesh)


async def _ride(workflow: TripWorkflow, payment_method: str = "pm_card_visa") -> Trip:
    trip = await workflow.request(request(payment_method=payment_method))
    await workflow.accept(AcceptTripRequest(name=trip.name))
    return await workflow.start(StartTripRequest(name=trip.name))


@pytest.mark.parametrize("outage", ["billing", "payments"])
def test_complete_during_an_outage_keeps_the_trip_in_progress_and_the_retry_finishes_once(
    runner, store, outage
):
    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        trip = await _ride(workflow)
        mesh.down.add(outage)
        complete = CompleteTripRequest(name=trip.name, request_id="c1")
        with pytest.raises(Unavailable):
            await workflow.complete(complete)
        halfway = await store.get(trip.name)
        assert halfway.state == domain.IN_PROGRESS
        assert halfway.payment_state == domain.NOT_CHARGED

        mesh.down.clear()
        done = await workflow.complete(complete)
        assert done.state == domain.COMPLETED
        assert done.payment_state == domain.PAID
        assert await workflow.complete(complete) == done
        assert [m for m, _ in mesh.calls].count("CreateInvoice") == 1, (
            "a recorded invoice is not asked for again"
        )
        assert len(mesh.invoices) == 1
        assert len(mesh.payments) == 1
        await mesh.released(done.driver)
        assert done.end_time.ToNanoseconds() >= done.start_time.ToNanoseconds()

        with pytest.raises(FailedPrecondition) as again:
            await workflow.complete(CompleteTripRequest(name=trip.name, request_id="c2"))
        assert again.value.reason == "TRIP_NOT_IN_PROGRESS"

    run(runner, store, scenario)


def test_a_declined_charge_completes_the_trip_as_declined(runner, store):
    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        trip = await _ride(workflow, "pm_card_declined")
        done = await workflow.complete(CompleteTripRequest(name=trip.name))
        assert (done.state, done.payment_state) == (domain.COMPLETED, domain.DECLINED)
        assert done.payment

    run(runner, store, scenario)


CHEAP = Money(currency_code="EUR", nanos=10_000_000)


def _as_if_made_first(make: Callable[[Any], Any]) -> Callable[..., Awaitable[Any]]:
    """A neighbour's create that answers with what someone else made for the trip before it completed."""

    async def create(draft: Any, request_id: str) -> Any:
        return make(draft)

    return create


def test_an_invoice_made_first_for_another_amount_never_completes_the_trip(runner, store, caplog):
    mesh = Neighbours()
    mesh.create_invoice = _as_if_made_first(  # type: ignore[method-assign]
        lambda draft: Invoice(name="invoices/cheap", trip=draft.trip, passenger=draft.passenger, amount=CHEAP)
    )

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        trip = await _ride(workflow)
        with pytest.raises(FailedPrecondition) as refused:
            await workflow.complete(CompleteTripRequest(name=trip.name, request_id="c1"))
        assert refused.value.reason == "INVOICE_AMOUNT_MISMATCH"
        assert refused.value.metadata == {
            "trip": trip.name,
            "invoice": "invoices/cheap",
            "fare": "EUR 9.87",
            "invoice_amount": "EUR 0.01",
        }
        assert await store.get(trip.name) == trip, "the trip is left exactly as it was"
        assert mesh.drivers[trip.driver] == trip.name, "its driver is still on it"
        assert "CreatePayment" not in [m for m, _ in mesh.calls]

    run(runner, store, scenario, mesh)
    logged = [r for r in caplog.records if "refused to complete a trip" in r.getMessage()]
    assert [r.levelname for r in logged] == ["ERROR"]
    assert "EUR 0.01" in logged[0].getMessage()


def test_an_invoice_of_another_passenger_is_never_adopted(runner, store):
    mesh = Neighbours()
    mesh.create_invoice = _as_if_made_first(  # type: ignore[method-assign]
        lambda draft: Invoice(
            name="invoices/theirs", trip=draft.trip, passenger="passengers/p2", amount=quote().fare
        )
    )

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        trip = await _ride(workflow)
        with pytest.raises(FailedPrecondition) as refused:
            await workflow.complete(CompleteTripRequest(name=trip.name))
        assert refused.value.reason == "INVOICE_MISMATCH"
        assert refused.value.metadata["invoice_passenger"] == "passengers/p2"
        assert (await store.get(trip.name)).invoice == ""

    run(runner, store, scenario, mesh)


def test_a_payment_made_first_for_another_amount_is_never_adopted(runner, store):
    mesh = Neighbours()
    mesh.create_payment = _as_if_made_first(  # type: ignore[method-assign]
        lambda draft: Payment(
            name="payments/cheap",
            invoice=draft.invoice,
            amount=CHEAP,
            state=PaymentState.PAYMENT_STATE_SUCCEEDED,
        )
    )

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        trip = await _ride(workflow)
        with pytest.raises(FailedPrecondition) as refused:
            await workflow.complete(CompleteTripRequest(name=trip.name))
        assert refused.value.reason == "PAYMENT_AMOUNT_MISMATCH"
        assert refused.value.metadata == {
            "trip": trip.name,
            "payment": "payments/cheap",
            "fare": "EUR 9.87",
            "payment_amount": "EUR 0.01",
        }
        now = await store.get(trip.name)
        assert now.state == domain.IN_PROGRESS
        assert (now.payment, now.payment_state) == ("", domain.NOT_CHARGED)
        assert mesh.drivers[trip.driver] == trip.name

    run(runner, store, scenario, mesh)


def test_a_completed_trip_was_invoiced_and_charged_exactly_its_fare(runner, store):
    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        trip = await _ride(workflow)
        done = await workflow.complete(CompleteTripRequest(name=trip.name))
        assert done.state == domain.COMPLETED
        assert [i.amount for i in mesh.invoices.values()] == [trip.fare]
        assert [p.amount for p in mesh.payments.values()] == [trip.fare]

    run(runner, store, scenario)


@pytest.mark.parametrize("step", ["cancel", "complete"])
def test_a_trip_ends_during_a_drivers_outage_and_its_driver_is_released_once_drivers_is_back(
    runner, store, step
):
    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        trip = await (_ride(workflow) if step == "complete" else workflow.request(request()))

        async def end() -> Trip:
            if step == "complete":
                return await workflow.complete(CompleteTripRequest(name=trip.name, request_id="e1"))
            return await workflow.cancel(CancelTripRequest(name=trip.name, reason="plans", request_id="e1"))

        mesh.down.add("drivers")
        done = await end()
        assert done.state == (domain.COMPLETED if step == "complete" else domain.CANCELLED)
        assert mesh.drivers[trip.driver] == trip.name, "held while drivers is away"
        async with asyncio.timeout(WAIT):
            await mesh.refused.wait()  # the outbox tried, and keeps the release
        owed = await store.outbox_pending(10, RELEASE)
        assert [(e.id, e.item) for e in owed] == [(f"{trip.name}:release", Release(trip.driver, trip.name))]

        mesh.down.clear()
        await mesh.released(trip.driver)
        assert mesh.calls.count(("ReleaseTrip", f"{trip.name}:release")) == 1
        assert await end() == done, "a repeat is answered as the first, and queues nothing again"

    run(runner, store, scenario)


def test_a_driver_freed_a_moment_ago_is_found_while_its_release_is_still_in_the_outbox(runner, store):
    """The only driver near cancels out of one trip and is asked for the next before the outbox has
    released it (held here until that first ask): RequestTrip waits for the outbox's pass and asks
    again, instead of answering NO_DRIVER_AVAILABLE with a free driver in reach."""
    mesh = Neighbours()
    mesh.drivers = {"drivers/near": ""}
    asked, assign, release = asyncio.Event(), mesh.assign_nearest_driver, mesh.release_trip

    async def asking(trip: str, pickup: LatLng, radius: float) -> Driver | None:
        found = await assign(trip, pickup, radius)
        asked.set()
        return found

    async def once_asked(driver: str, trip: str, request_id: str) -> None:
        await asked.wait()
        await release(driver, trip, request_id)

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        first = await workflow.request(request(request_id="r1"))
        mesh.assign_nearest_driver, mesh.release_trip = asking, once_asked  # type: ignore[method-assign]
        await workflow.cancel(CancelTripRequest(name=first.name, reason="plans"))

        second = await workflow.request(request(request_id="r2"))

        assert (second.state, second.driver) == (domain.DRIVER_ASSIGNED, "drivers/near")
        assert [key for method, key in mesh.calls if method == "AssignNearestDriver"] == [
            first.name,
            second.name,
            second.name,
        ]

    run(runner, store, scenario, mesh)


def test_no_driver_in_reach_and_no_release_in_flight_is_answered_at_once(runner, store):
    mesh = Neighbours()
    mesh.drivers = {"drivers/near": "trips/elsewhere"}

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        with pytest.raises(FailedPrecondition) as refused:
            await workflow.request(request(request_id="r1"))

        assert refused.value.reason == "NO_DRIVER_AVAILABLE"
        assert [method for method, _ in mesh.calls].count("AssignNearestDriver") == 1, "asked once"

    run(runner, store, scenario, mesh)


def test_one_request_id_cancelling_two_trips_at_once_cancels_one_and_refuses_the_other(runner, store):
    """Each cancel looks for an answer under its own trip's hold and finds none; the second to write
    collides on the request log's key, rolls back and is refused, on either engine."""

    async def scenario(workflow: TripWorkflow, mesh: Neighbours) -> None:
        trips = [await workflow.request(request()), await workflow.request(request())]
        released, release = asyncio.Barrier(2), mesh.release_trip

        async def both_past_the_replay_check(driver: str, trip: str, request_id: str) -> None:
            await release(driver, trip, request_id)
            await released.wait()

        mesh.release_trip = both_past_the_replay_check  # type: ignore[method-assign]
        results = await asyncio.gather(
            *(workflow.cancel(CancelTripRequest(name=t.name, reason="bye", request_id="c1")) for t in trips),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, InvalidArgument)]
        assert [r.reason for r in refused] == ["REQUEST_ID_REUSED"], results
        states = sorted([(await store.get(t.name)).state for t in trips])
        assert states == sorted([domain.CANCELLED, domain.DRIVER_ASSIGNED])

    run(runner, store, scenario)


def test_steps_on_one_trip_wait_for_each_other():
    locks = KeyedLocks()
    order: list[str] = []

    async def step(name: str, key: str) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(0.01)
            order.append(f"{name}-")

    async def main() -> None:
        await asyncio.gather(step("a", "t1"), step("b", "t1"), step("c", "t2"))

    asyncio.run(main())
    assert order.index("a-") < order.index("b+")
    assert order.index("c+") < order.index("a-"), "other trips do not wait"
    assert len(locks) == 0


def test_steps_on_one_trip_wait_for_each_other_across_replicas(backends, runner):
    # Two processes' locks over one database: each has its own store (connections) and owner.
    first = KeyedLocks(TripStore(backends.open(MIGRATIONS)))
    second = KeyedLocks(TripStore(backends.open(MIGRATIONS)))
    order: list[str] = []

    async def step(locks: KeyedLocks, name: str, key: str) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(0.05)
            order.append(f"{name}-")

    async def main() -> None:
        await asyncio.gather(step(first, "a", "t1"), step(second, "b", "t1"), step(second, "c", "t2"))

    runner.run(main())
    a, b = (order.index("a+"), order.index("a-")), (order.index("b+"), order.index("b-"))
    assert a[1] < b[0] or b[1] < a[0], f"the two replicas overlapped on one trip: {order}"
    assert order.index("c+") < max(a[1], b[1]), "other trips do not wait"


def test_a_lock_is_let_go_when_the_step_fails(backends, runner):
    first = KeyedLocks(TripStore(backends.open(MIGRATIONS)))
    second = KeyedLocks(TripStore(backends.open(MIGRATIONS)))

    async def main() -> str:
        with pytest.raises(Unavailable):
            async with first.hold("t1"):
                raise Unavailable("billing is down")
        async with asyncio.timeout(WAIT), second.hold("t1"):
            return "taken"

    assert runner.run(main()) == "taken"


def test_a_request_lock_and_its_trip_lock_share_one_connection(backends, runner):
    """RequestTrip holds its request_id, then the trip: on PostgreSQL both on one lock connection, so
    as many requests as the lock pool has connections still get their trips' locks."""
    store = TripStore(backends.open(MIGRATIONS))
    locks = KeyedLocks(store)
    pool = getattr(store.db, "lock_pool", None)

    async def request(n: int) -> None:
        async with locks.hold(f"request:r{n}"):
            await asyncio.sleep(0)
            async with locks.hold(f"t{n}"):
                await asyncio.sleep(0)

    async def main() -> None:
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(request(n) for n in range(pool.max_size if pool else 4)))

    runner.run(main())
    assert len(locks) == 0


@pytest.mark.parametrize("backends", ["postgres"], indirect=True)
def test_a_replica_that_dies_holding_a_trip_lets_it_go_at_once(backends, runner):
    """No lease to wait out: the lock lives in the dead replica's connection."""
    dying = KeyedLocks(TripStore(backends.open(MIGRATIONS)))
    live = KeyedLocks(TripStore(backends.open(MIGRATIONS)))

    async def main() -> str:
        held, never = asyncio.Event(), asyncio.Event()

        async def step() -> None:
            async with dying.hold("t1"):
                held.set()
                await never.wait()  # the process hangs, then its connection dies

        stuck = asyncio.create_task(step())
        await held.wait()
        with psycopg.connect(backends.dsn(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted AND database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        try:
            async with asyncio.timeout(WAIT), live.hold("t1"):
                return "taken"
        finally:
            stuck.cancel()
            await asyncio.wait({stuck})

    assert runner.run(main()) == "taken"


def _replica(path: str, key: str, rounds: int, inside: str, told: Connection | None) -> None:
    """Another trips process on the SQLite file at `path`: `rounds` steps holding `key`, each marking
    that it is inside with a file only one process can create, and committing a write as a step
    does; then, if it is to tell `told`, it holds `key` and says so, until it is killed."""

    async def main() -> None:
        store = TripStore(SqliteBackend(path, MIGRATIONS))
        for _ in range(rounds):
            async with store.hold(key):
                os.close(os.open(inside, os.O_CREAT | os.O_EXCL))  # FileExistsError: two inside
                await store.outbox_delivered(["none"])
                os.unlink(inside)
        if told is not None:
            async with store.hold(key):
                told.send("held")
                await asyncio.Event().wait()

    asyncio.run(main())


def test_two_processes_on_one_sqlite_file_never_hold_a_trip_at_once(tmp_path):
    spawn = multiprocessing.get_context("spawn")
    args = (str(tmp_path / "trips.db"), "t1", 300, str(tmp_path / "inside"), None)
    asyncio.run(TripStore(SqliteBackend(tmp_path / "trips.db", MIGRATIONS)).close())  # migrated first
    replicas = [spawn.Process(target=_replica, args=args) for _ in range(2)]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.join(60)
    assert [r.exitcode for r in replicas] == [0, 0], "both replicas were inside at once, or failed"


def test_a_process_killed_holding_a_trip_lets_it_go_at_once(tmp_path, runner):
    """No lease to wait out: the kernel drops a dead process's locks when its descriptors close."""
    store = TripStore(SqliteBackend(tmp_path / "trips.db", MIGRATIONS))
    assert isinstance(store.db, SqliteBackend)
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    dying = spawn.Process(target=_replica, args=(str(tmp_path / "trips.db"), "t1", 0, "", theirs))
    dying.start()
    try:
        assert ours.poll(WAIT), "the other process never held t1"
        assert ours.recv() == "held"
        assert held_elsewhere(store.db.locks, "t1")
        os.kill(dying.pid or 0, signal.SIGKILL)
        dying.join(WAIT)
        assert not held_elsewhere(store.db.locks, "t1"), "the dead process's lock outlived it"
    finally:
        dying.kill()
        dying.join()

    async def main() -> str:
        async with asyncio.timeout(WAIT), KeyedLocks(store).hold("t1"):
            return "taken"

    assert runner.run(main()) == "taken"
    runner.run(store.close())
