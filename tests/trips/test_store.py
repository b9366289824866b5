"""The trip store on SQLite and PostgreSQL: hidden MATCHING trips, transitions, replays, the outbox."""

from __future__ import annotations

import grpc
import pytest
from rideshare.trips.v1.trips_pb2 import (
    AcceptTripRequest,
    CancelTripRequest,
    ListTripsRequest,
    RequestTripRequest,
    Trip,
)

from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.runtime.resources import fingerprint
from services.trips import domain
from services.trips.notices import Notice
from services.trips.store import MIGRATIONS, RELEASE, Release, TripStore
from tests.postgres import Backends

from .conftest import assigned, notice
from .test_domain import quote, request


@pytest.fixture
def store(backends: Backends) -> TripStore:
    """The trip store, once per engine (the other trip tests use the SQLite one of conftest.py)."""
    return TripStore(backends.open(MIGRATIONS))


def test_a_matching_trip_is_invisible_until_a_driver_is_assigned(store, runner):
    async def scenario() -> None:
        rpc = request(request_id="r1")
        trip = domain.new_trip(rpc, quote())
        matching = await store.add_matching(trip, "r1", fingerprint(rpc))
        trip_id = matching.id

        with pytest.raises(NotFound) as error:
            await store.get(trip.name)
        assert error.value.reason == "TRIP_NOT_FOUND"
        page = await store.list(ListTripsRequest())
        assert (page.items, page.next_page_token) == ([], "")
        assert await store.matching_by_key("r1") == matching
        assert await store.replayed(rpc) is None

        assert (await store.matching(trip_id)).trip == trip

        done = await store.finish_matching(matching, "drivers/d1", rpc, notice)

        assert done.state == domain.DRIVER_ASSIGNED
        assert done.driver == "drivers/d1"
        assert await store.get(trip.name) == done
        assert await store.matching(trip_id) is None
        assert await store.replayed(rpc) == done
        assert [e.item for e in await store.outbox_pending(10)] == notice(done)

    runner.run(scenario())


def test_a_dropped_match_leaves_nothing(store, runner):
    async def scenario() -> None:
        rpc = request(request_id="r1")
        matching = await store.add_matching(domain.new_trip(rpc, quote()), "r1", fingerprint(rpc))

        await store.drop_matching(matching.id)

        assert await store.matching_by_key("r1") is None
        assert await store.stale_matching(2**62, 10) == []

    runner.run(scenario())


def test_stale_matching_lists_only_old_untouched_attempts(store, runner):
    async def scenario() -> None:
        rpc = request()
        matching = await store.add_matching(domain.new_trip(rpc, quote()), "", fingerprint(rpc))

        assert await store.stale_matching(matching.update_ns, 10) == []
        assert [m.id for m in await store.stale_matching(matching.update_ns + 1, 10)] == [matching.id]

    runner.run(scenario())


def test_a_transition_is_atomic_with_its_notifications_and_replayed(store, runner):
    async def scenario() -> None:
        trip = await assigned(store)
        await store.outbox_delivered([entry.id for entry in await store.outbox_pending(10)])
        trip_id = trip.name.removeprefix("trips/")
        accept = AcceptTripRequest(name=trip.name, request_id="a1")

        def change(current):
            return domain.accept(current), notice(current, "Accepted")

        accepted = await store.transition(trip_id, accept, change)
        assert accepted.state == domain.ACCEPTED
        assert await store.transition(trip_id, accept, change) == accepted
        assert len(await store.outbox_pending(10)) == 1

        with pytest.raises(InvalidArgument) as reused:
            await store.transition(trip_id, AcceptTripRequest(name="trips/x", request_id="a1"), change)
        assert reused.value.reason == "REQUEST_ID_REUSED"

        def failing(current):
            return domain.start(domain.start(current)), notice(current, "Never")

        with pytest.raises(FailedPrecondition):
            await store.transition(trip_id, AcceptTripRequest(name=trip.name), failing)
        assert len(await store.outbox_pending(10)) == 1, "a refused step queues nothing"
        assert (await store.get(trip.name)).state == domain.ACCEPTED

    runner.run(scenario())


def test_the_dropoff_time_is_fixed_by_the_first_attempt(store, runner):
    async def scenario() -> None:
        trip = await assigned(store)
        trip_id = trip.name.removeprefix("trips/")
        with pytest.raises(NotFound):
            await store.fix_dropoff(trip_id)

        await store.transition(trip_id, AcceptTripRequest(name=trip.name), lambda t: (_started(t), []))
        first = await store.fix_dropoff(trip_id)

        assert await store.fix_dropoff(trip_id) == first
        invoiced = await store.record_invoice(trip_id, "invoices/i")
        paid = await store.record_payment(trip_id, "payments/p", domain.DECLINED)
        assert invoiced.invoice == "invoices/i"
        assert (paid.payment, paid.payment_state) == ("payments/p", domain.DECLINED)
        assert paid.state == domain.IN_PROGRESS
        assert not paid.HasField("end_time"), "the drop-off time shows only once the trip is completed"

    runner.run(scenario())


def _started(trip: Trip) -> Trip:
    return domain.start(domain.accept(trip))


def test_list_filters_by_passenger_and_driver_in_pages(store, runner):
    async def names(passenger: str, driver: str, size: int) -> list[list[str]]:
        pages, token = [], ""
        while True:
            page = await store.list(
                ListTripsRequest(page_size=size, page_token=token), passenger=passenger, driver=driver
            )
            pages.append([t.name for t in page.items])
            token = page.next_page_token
            if not token:
                return pages

    async def scenario() -> None:
        made = [
            (await assigned(store, passenger=f"passengers/p{i % 2}", driver=f"drivers/d{i % 3}")).name
            for i in range(7)
        ]

        assert await names("", "", 3) == [made[0:3], made[3:6], made[6:7]]
        assert await names("passengers/p0", "", 10) == [made[0::2]]
        assert await names("", "drivers/d1", 1) == [[made[1]], [made[4]]]
        assert await names("passengers/p1", "drivers/d0", 10) == [[made[3]]]
        assert await names("passengers/none", "", 10) == [[]]

    runner.run(scenario())


def test_outbox_rows_stay_in_order_until_delivered_and_dead_ones_are_kept_aside(store, runner):
    async def scenario() -> None:
        for index in range(3):
            await assigned(store, driver=f"drivers/d{index}")
        entries = await store.outbox_pending(10)
        assert len(entries) == 3
        assert len({e.id for e in entries}) == 3

        await store.outbox_failed([entries[0].id], "UNAVAILABLE: down", dead=False)
        await store.outbox_failed([entries[1].id], "INVALID_ARGUMENT: bad", dead=True)
        await store.outbox_delivered([entries[2].id])

        left = await store.outbox_pending(10)
        assert [(e.id, e.attempts) for e in left] == [(entries[0].id, 1)]

    runner.run(scenario())


def test_a_claim_deletes_what_its_owner_delivered_and_takes_back_what_it_still_holds(store, runner):
    async def scenario() -> None:
        for index in range(3):  # three notices to one passenger
            await assigned(store, driver=f"drivers/d{index}")
        ids = [e.id for e in await store.outbox_pending(10)]
        assert [e.id for e in await store.claim_outbox("me", 2, 60)] == ids[:2]
        assert await store.claim_outbox("other", 10, 60) == [], "the third waits behind ours"

        # The first sent; the second still ours (say its claim's answer was lost with the database).
        again = await store.claim_outbox("me", 10, 60, delivered=ids[:1])

        assert [e.id for e in again] == ids[1:]
        assert [e.id for e in await store.outbox_pending(10)] == ids[1:]

    runner.run(scenario())


def test_a_release_and_a_notice_to_one_driver_are_claimed_apart_and_neither_waits_for_the_other(
    store, runner
):
    async def scenario() -> None:
        trip = await assigned(store)
        told = Notice(trip.driver, "Trip cancelled", "You are available again.", trip.name)
        ended = await store.transition(
            trip.name.removeprefix("trips/"),
            CancelTripRequest(name=trip.name, request_id="c1"),
            lambda t: (domain.cancel(t, ""), [Release(t.driver, t.name), told]),
        )
        assert ended.state == domain.CANCELLED

        [release] = await store.claim_outbox("drivers-loop", 10, 60, kind=RELEASE)
        assert (release.id, release.item) == (f"{trip.name}:release", Release(trip.driver, trip.name))
        # The driver's notification goes out while its release is in another loop's hands (say
        # drivers is away): kinds keep their own order, not each other's.
        notices = await store.claim_outbox("notices-loop", 10, 60)
        assert [e.item for e in notices] == [*notice(trip), told]
        assert await store.claim_outbox("other-drivers-loop", 10, 60, kind=RELEASE) == []

    runner.run(scenario())


def test_everything_survives_a_restart(backends, runner):
    first = TripStore(backends.open(MIGRATIONS))
    trip = runner.run(assigned(first, request_id="r1"))
    runner.run(first.close())

    second = TripStore(backends.open(MIGRATIONS))
    assert runner.run(second.get(trip.name)) == trip
    assert runner.run(second.replayed(request(request_id="r1"))) == trip
    assert len(runner.run(second.outbox_pending(10))) == 1


def test_replayed_refuses_a_reused_request_id(store, runner):
    async def scenario() -> None:
        await assigned(store, request_id="r1")

        with pytest.raises(InvalidArgument) as error:
            await store.replayed(request(request_id="r1", payment_method="pm_card_declined"))
        assert error.value.reason == "REQUEST_ID_REUSED"
        assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert await store.replayed(RequestTripRequest()) is None

    runner.run(scenario())
