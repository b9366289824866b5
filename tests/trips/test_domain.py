"""The trip state machine and request rules, without servers."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration
from google.type.latlng_pb2 import LatLng
from google.type.money_pb2 import Money
from rideshare.billing.v1.billing_pb2 import QuoteFareResponse
from rideshare.payments.v1.payments_pb2 import Payment, PaymentState
from rideshare.trips.v1.trips_pb2 import RequestTripRequest, Trip

from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.trips import domain

ASSIGNED, ACCEPTED, IN_PROGRESS = domain.DRIVER_ASSIGNED, domain.ACCEPTED, domain.IN_PROGRESS
COMPLETED, CANCELLED = domain.COMPLETED, domain.CANCELLED
ALL_STATES = [ASSIGNED, ACCEPTED, IN_PROGRESS, COMPLETED, CANCELLED]


def request(**fields) -> RequestTripRequest:
    values = {
        "passenger": "passengers/p1",
        "pickup": LatLng(latitude=52.52, longitude=13.405),
        "dropoff": LatLng(latitude=52.50, longitude=13.45),
        "payment_method": "pm_card_visa",
    }
    values.update(fields)
    return RequestTripRequest(**values)


def quote() -> QuoteFareResponse:
    return QuoteFareResponse(
        fare=Money(currency_code="EUR", units=9, nanos=870_000_000),
        distance_meters=3912.5,
        estimated_duration=Duration(seconds=470),
    )


def trip_in(state: int, **fields) -> Trip:
    trip = domain.new_trip(request(), quote())
    trip.state = state
    trip.driver = "drivers/d1"
    for key, value in fields.items():
        setattr(trip, key, value)
    return trip


def refusal(error: pytest.ExceptionInfo[FailedPrecondition]) -> tuple[str, dict[str, str]]:
    return error.value.reason, error.value.metadata


def test_a_new_trip_is_matching_with_the_quote_and_nothing_charged():
    trip = domain.new_trip(request(), quote())

    assert trip.name.startswith("trips/")
    assert trip.state == domain.MATCHING
    assert trip.fare == quote().fare
    assert trip.distance_meters == 3912.5
    assert trip.estimated_duration.seconds == 470
    assert trip.payment_state == domain.NOT_CHARGED
    assert trip.create_time == trip.update_time
    assert not trip.driver
    assert not trip.HasField("start_time")
    assert not trip.HasField("end_time")


def test_the_happy_path_through_every_state():
    trip = trip_in(ASSIGNED)
    accepted = domain.accept(trip)
    assert accepted.state == ACCEPTED
    assert not accepted.HasField("start_time")

    started = domain.start(accepted)
    assert started.state == IN_PROGRESS
    assert started.start_time == started.update_time

    charged = Trip()
    charged.CopyFrom(started)
    charged.invoice, charged.payment, charged.payment_state = "invoices/i", "payments/p", domain.PAID
    done = domain.complete(charged, dropoff_ns=started.start_time.ToNanoseconds() + 10**9)
    assert done.state == COMPLETED
    assert done.end_time.ToNanoseconds() == started.start_time.ToNanoseconds() + 10**9
    assert trip.state == ASSIGNED, "transitions return a new trip"


@pytest.mark.parametrize(
    ("step", "allowed", "reason"),
    [
        (domain.accept, {ASSIGNED}, "TRIP_NOT_ASSIGNED"),
        (domain.start, {ACCEPTED}, "TRIP_NOT_ACCEPTED"),
        (domain.check_completable, {IN_PROGRESS}, "TRIP_NOT_IN_PROGRESS"),
        (domain.check_cancellable, {ASSIGNED, ACCEPTED}, "TRIP_NOT_CANCELLABLE"),
    ],
)
def test_every_illegal_transition_is_refused_with_its_reason_and_the_state(step, allowed, reason):
    for state in ALL_STATES:
        trip = trip_in(state)
        if state in allowed:
            step(trip)
            continue
        with pytest.raises(FailedPrecondition) as error:
            step(trip)
        assert refusal(error) == (reason, {"state": domain.state_name(state)})
        assert trip.name in error.value.message


def test_cancel_records_the_reason_and_the_end_time():
    cancelled = domain.cancel(trip_in(ACCEPTED), "Passenger changed plans")

    assert cancelled.state == CANCELLED
    assert cancelled.cancel_reason == "Passenger changed plans"
    assert cancelled.end_time == cancelled.update_time


def test_complete_never_marks_a_trip_without_a_charge():
    with pytest.raises(AssertionError):
        domain.complete(trip_in(IN_PROGRESS, invoice="invoices/i"), dropoff_ns=0)


@pytest.mark.parametrize(
    ("fields", "paths"),
    [
        ({"pickup": LatLng(latitude=91, longitude=0)}, ["pickup.latitude"]),
        (
            {"dropoff": LatLng(latitude=-90.5, longitude=180.5)},
            ["dropoff.latitude", "dropoff.longitude"],
        ),
        ({"pickup": LatLng(latitude=float("nan"), longitude=0)}, ["pickup.latitude"]),
    ],
)
def test_bad_coordinates_name_every_field(fields, paths):
    with pytest.raises(InvalidArgument) as error:
        domain.check_request(request(**fields))
    assert error.value.reason == "INVALID_LOCATION"
    assert [v.field for v in error.value.violations] == paths


@pytest.mark.parametrize("method", ["   ", "pm card", "x" * 101, "pm\x00"])
def test_bad_payment_methods_are_refused(method):
    with pytest.raises(InvalidArgument) as error:
        domain.check_request(request(payment_method=method))
    assert [v.field for v in error.value.violations] == ["payment_method"]


def test_cancel_reason_is_limited():
    domain.check_cancel_reason("x" * 500)
    with pytest.raises(InvalidArgument):
        domain.check_cancel_reason("x" * 501)


def test_downstream_keys_are_derived_from_the_trip():
    assert domain.invoice_request_id("trips/t") == "trips/t:invoice"
    assert domain.payment_request_id("trips/t") == "trips/t:payment"
    assert domain.release_request_id("trips/t") == "trips/t:release"


def test_invoice_request_says_where_the_trip_went_and_how_long_it_took_never_what_it_costs():
    trip = trip_in(IN_PROGRESS)
    trip.start_time.FromNanoseconds(1_000_000_000_000)

    invoice = domain.invoice_for(trip, dropoff_ns=1_000_000_000_000 + 754 * 10**9)

    assert (invoice.trip, invoice.passenger) == (trip.name, trip.passenger)
    assert (invoice.pickup, invoice.dropoff) == (trip.pickup, trip.dropoff)
    assert invoice.duration.seconds == 754
    assert not invoice.HasField("amount"), "billing prices the invoice itself"
    assert invoice.distance_meters == 0
    assert domain.invoice_for(trip, 1_000_000_000_000 + 754 * 10**9) == invoice


def test_payment_outcomes_map_to_the_trip_payment_state():
    assert domain.payment_state(Payment(state=PaymentState.PAYMENT_STATE_SUCCEEDED)) == domain.PAID
    assert domain.payment_state(Payment(state=PaymentState.PAYMENT_STATE_DECLINED)) == domain.DECLINED
