"""The trip store on a real SQLite file: hidden MATCHING trips, transitions, replays, the outbox."""

from __future__ import annotations

import grpc
import pytest
from rideshare.trips.v1.trips_pb2 import AcceptTripRequest, RequestTripRequest, Trip

from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.runtime.storage import Database, fingerprint
from services.trips import domain
from services.trips.store import MIGRATIONS, SqliteTripStore

from .conftest import assigned, notice
from .test_domain import quote, request


def test_a_matching_trip_is_invisible_until_a_driver_is_assigned(store):
    rpc = request(request_id="r1")
    trip = domain.new_trip(rpc, quote())
    matching = store.add_matching(trip, "r1", fingerprint(rpc))
    trip_id = matching.id

    with pytest.raises(NotFound) as error:
        store.get(trip_id)
    assert error.value.reason == "TRIP_NOT_FOUND"
    assert store.page("", "", 0, 10) == ([], None)
    assert store.matching_by_key("r1") == matching
    assert store.replayed("RequestTrip", rpc) is None

    store.set_candidate(trip_id, "drivers/d1")
    assert store.matching(trip_id).trip.driver == "drivers/d1"

    done = store.finish_matching(trip_id, "drivers/d1", rpc, notice)

    assert done.state == domain.DRIVER_ASSIGNED
    assert done.driver == "drivers/d1"
    assert store.get(trip_id) == done
    assert store.matching(trip_id) is None
    assert store.replayed("RequestTrip", rpc) == done
    assert [e.notice for e in store.pending_notices(10)] == notice(done)


def test_a_dropped_match_leaves_nothing(store):
    rpc = request(request_id="r1")
    matching = store.add_matching(domain.new_trip(rpc, quote()), "r1", fingerprint(rpc))

    store.drop_matching(matching.id)

    assert store.matching_by_key("r1") is None
    assert store.stale_matching(2**62, 10) == []


def test_stale_matching_lists_only_old_untouched_attempts(store):
    rpc = request()
    matching = store.add_matching(domain.new_trip(rpc, quote()), "", fingerprint(rpc))

    assert store.stale_matching(matching.update_ns, 10) == []
    assert [m.id for m in store.stale_matching(matching.update_ns + 1, 10)] == [matching.id]


def test_a_transition_is_atomic_with_its_notifications_and_replayed(store):
    trip = assigned(store)
    for entry in store.pending_notices(10):
        store.notice_delivered(entry.id)
    trip_id = trip.name.removeprefix("trips/")
    accept = AcceptTripRequest(name=trip.name, request_id="a1")

    def change(current):
        return domain.accept(current), notice(current, "Accepted")

    accepted = store.transition(trip_id, "AcceptTrip", accept, change)
    assert accepted.state == domain.ACCEPTED
    assert store.transition(trip_id, "AcceptTrip", accept, change) == accepted
    assert len(store.pending_notices(10)) == 1

    with pytest.raises(InvalidArgument) as reused:
        store.transition(trip_id, "AcceptTrip", AcceptTripRequest(name="trips/x", request_id="a1"), change)
    assert reused.value.reason == "REQUEST_ID_REUSED"

    def failing(current):
        return domain.start(domain.start(current)), notice(current, "Never")

    with pytest.raises(FailedPrecondition):
        store.transition(trip_id, "StartTrip", AcceptTripRequest(name=trip.name), failing)
    assert len(store.pending_notices(10)) == 1, "a refused step queues nothing"
    assert store.get(trip_id).state == domain.ACCEPTED


def test_the_dropoff_time_is_fixed_by_the_first_attempt(store):
    trip = assigned(store)
    trip_id = trip.name.removeprefix("trips/")
    with pytest.raises(NotFound):
        store.fix_dropoff(trip_id)

    store.transition(trip_id, "StartTrip", AcceptTripRequest(name=trip.name), lambda t: (_started(t), []))
    first = store.fix_dropoff(trip_id)

    assert store.fix_dropoff(trip_id) == first
    invoiced = store.record_invoice(trip_id, "invoices/i")
    paid = store.record_payment(trip_id, "payments/p", domain.DECLINED)
    assert invoiced.invoice == "invoices/i"
    assert (paid.payment, paid.payment_state) == ("payments/p", domain.DECLINED)
    assert paid.state == domain.IN_PROGRESS
    assert not paid.HasField("end_time"), "the drop-off time shows only once the trip is completed"


def _started(trip: Trip) -> Trip:
    return domain.start(domain.accept(trip))


def test_list_filters_by_passenger_and_driver_in_pages(store):
    made = [
        assigned(store, passenger=f"passengers/p{i % 2}", driver=f"drivers/d{i % 3}").name for i in range(7)
    ]

    def names(passenger: str, driver: str, size: int) -> list[list[str]]:
        pages, after = [], 0
        while True:
            trips, last = store.page(passenger, driver, after, size)
            pages.append([t.name for t in trips])
            if last is None:
                return pages
            after = last

    assert names("", "", 3) == [made[0:3], made[3:6], made[6:7]]
    assert names("passengers/p0", "", 10) == [made[0::2]]
    assert names("", "drivers/d1", 1) == [[made[1]], [made[4]]]
    assert names("passengers/p1", "drivers/d0", 10) == [[made[3]]]
    assert names("passengers/none", "", 10) == [[]]


def test_outbox_rows_stay_in_order_until_delivered_and_dead_ones_are_kept_aside(store):
    for index in range(3):
        assigned(store, driver=f"drivers/d{index}")
    entries = store.pending_notices(10)
    assert len(entries) == 3
    assert len({e.id for e in entries}) == 3

    store.notice_failed(entries[0].id, "UNAVAILABLE: down", dead=False)
    store.notice_failed(entries[1].id, "INVALID_ARGUMENT: bad", dead=True)
    store.notice_delivered(entries[2].id)

    left = store.pending_notices(10)
    assert [(e.id, e.attempts) for e in left] == [(entries[0].id, 1)]


def test_everything_survives_a_restart(tmp_path):
    first = SqliteTripStore(Database(tmp_path / "trips.db", MIGRATIONS))
    trip = assigned(first, request_id="r1")
    first.close()

    second = SqliteTripStore(Database(tmp_path / "trips.db", MIGRATIONS))
    try:
        assert second.get(trip.name.removeprefix("trips/")) == trip
        assert second.replayed("RequestTrip", request(request_id="r1")) == trip
        assert len(second.pending_notices(10)) == 1
    finally:
        second.close()


def test_replayed_refuses_a_reused_request_id(store):
    assigned(store, request_id="r1")

    with pytest.raises(InvalidArgument) as error:
        store.replayed("RequestTrip", request(request_id="r1", payment_method="pm_card_declined"))
    assert error.value.reason == "REQUEST_ID_REUSED"
    assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert store.replayed("RequestTrip", RequestTripRequest()) is None
