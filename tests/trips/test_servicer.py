"""TripService in a real mesh: all six services in process, called over gRPC."""

from __future__ import annotations

import asyncio
import re

import grpc
from google.type.latlng_pb2 import LatLng
from rideshare.billing.v1 import billing_pb2
from rideshare.drivers.v1.drivers_pb2 import DriverStatus
from rideshare.payments.v1 import payments_pb2
from rideshare.trips.v1 import trips_pb2 as pb

from services.domain import money

from .rides import (
    DOMAIN,
    FAR,
    NEAR,
    NEARER,
    PICKUP,
    accept,
    cancel,
    complete,
    driver,
    get,
    get_driver,
    in_progress,
    list_trips,
    notified,
    passenger,
    released,
    request,
    request_trip,
    start,
)

NAME = re.compile(r"^trips/[0-9a-f]{32}$")
AVAILABLE, ON_TRIP = DriverStatus.DRIVER_STATUS_AVAILABLE, DriverStatus.DRIVER_STATUS_ON_TRIP


def test_a_whole_trip_from_request_to_receipt(mesh):
    rider = passenger(mesh)
    dana = driver(mesh, NEAR)

    trip = request(mesh, rider)
    assert NAME.match(trip.name)
    assert (trip.passenger, trip.driver, trip.state) == (rider, dana, pb.TRIP_STATE_DRIVER_ASSIGNED)
    assert trip.fare.currency_code == "EUR"
    assert trip.fare.units > 2
    assert trip.distance_meters > 3000
    assert trip.estimated_duration.seconds > 0
    assert trip.payment_state == pb.TRIP_PAYMENT_STATE_NOT_CHARGED
    assert get(mesh, trip.name) == trip
    held = get_driver(mesh, dana)
    assert (held.status, held.current_trip) == (ON_TRIP, trip.name)
    assert "New trip" in notified(mesh, dana, "New trip")

    accepted = accept(mesh, trip.name)
    assert accepted.state == pb.TRIP_STATE_ACCEPTED
    started = start(mesh, trip.name)
    assert started.state == pb.TRIP_STATE_IN_PROGRESS
    assert started.start_time.seconds > 0

    done = complete(mesh, trip.name)
    assert done.state == pb.TRIP_STATE_COMPLETED
    assert done.end_time.ToNanoseconds() >= done.start_time.ToNanoseconds()
    assert done.payment_state == pb.TRIP_PAYMENT_STATE_SUCCEEDED
    assert get(mesh, trip.name) == done

    invoice = mesh.call(mesh.billing.GetInvoice(billing_pb2.GetInvoiceRequest(name=done.invoice)))
    assert (invoice.trip, invoice.passenger, invoice.amount) == (trip.name, rider, trip.fare)
    payment = mesh.call(mesh.payments.GetPayment(payments_pb2.GetPaymentRequest(name=done.payment)))
    assert (payment.invoice, payment.amount, payment.state) == (
        invoice.name,
        trip.fare,
        payments_pb2.PAYMENT_STATE_SUCCEEDED,
    )
    released(mesh, dana)

    titles = notified(mesh, rider, "Your receipt")
    assert titles == ["Driver assigned", "Your driver is on the way", "Your trip has started", "Your receipt"]
    assert notified(mesh, dana, "New trip") == ["New trip"]


def test_a_declined_card_completes_the_trip_as_declined(mesh):
    rider = passenger(mesh)
    driver(mesh, NEAR)
    trip = in_progress(mesh, rider, payment_method="pm_card_declined")

    done = complete(mesh, trip.name)

    assert done.state == pb.TRIP_STATE_COMPLETED
    assert done.payment_state == pb.TRIP_PAYMENT_STATE_DECLINED
    payment = mesh.call(mesh.payments.GetPayment(payments_pb2.GetPaymentRequest(name=done.payment)))
    assert (payment.state, payment.decline_reason) == (payments_pb2.PAYMENT_STATE_DECLINED, "card_declined")
    released(mesh, done.driver)
    assert notified(mesh, rider, "Your receipt")


def test_an_invoice_made_first_for_another_amount_never_completes_the_trip(mesh):
    """Issue 11's finding, over real gRPC: a cheap invoice made for the trip before it completes."""
    rider = passenger(mesh)
    dana = driver(mesh, NEAR)
    trip = in_progress(mesh, rider)
    draft = billing_pb2.Invoice(trip=trip.name, passenger=rider, pickup=PICKUP, dropoff=NEARER)
    cheap = mesh.call(mesh.billing.CreateInvoice(billing_pb2.CreateInvoiceRequest(invoice=draft)))
    assert cheap.amount != trip.fare

    for attempt in ("c1", "c1", ""):
        failure = mesh.fail(
            mesh.trips.CompleteTrip(pb.CompleteTripRequest(name=trip.name, request_id=attempt))
        )
        assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
        assert (failure.info.reason, failure.info.domain) == ("INVOICE_AMOUNT_MISMATCH", DOMAIN)
        assert dict(failure.info.metadata) == {
            "trip": trip.name,
            "invoice": cheap.name,
            "fare": money.format_money(trip.fare),
            "invoice_amount": money.format_money(cheap.amount),
        }

    assert get(mesh, trip.name) == trip, "the trip stays IN_PROGRESS, nothing recorded"
    charged = mesh.call(mesh.payments.ListPayments(payments_pb2.ListPaymentsRequest()))
    assert list(charged.payments) == []
    assert get_driver(mesh, dana).current_trip == trip.name


def test_the_nearest_available_driver_is_chosen(mesh):
    rider = passenger(mesh)
    driver(mesh, NEAR, "Near")
    nearest = driver(mesh, NEARER, "Nearest")
    driver(mesh, None, "Offline")

    assert request(mesh, rider).driver == nearest


def test_no_driver_in_range_is_no_driver_available_and_no_trip(mesh):
    rider = passenger(mesh)
    driver(mesh, FAR)
    driver(mesh, None)

    failure = mesh.fail(mesh.trips.RequestTrip(request_trip(rider)))

    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert (failure.info.reason, failure.info.domain) == ("NO_DRIVER_AVAILABLE", DOMAIN)
    assert list_trips(mesh) == [[]]


def test_a_busy_driver_is_not_offered_a_second_trip(mesh):
    first, second = passenger(mesh, "a@example.com"), passenger(mesh, "b@example.com")
    dana = driver(mesh, NEAR)
    request(mesh, first)

    failure = mesh.fail(mesh.trips.RequestTrip(request_trip(second)))
    assert failure.info.reason == "NO_DRIVER_AVAILABLE"

    other = driver(mesh, NEARER)
    assert request(mesh, second).driver == other
    assert get_driver(mesh, dana).status == ON_TRIP


def test_an_unknown_passenger_is_not_found(mesh):
    driver(mesh, NEAR)

    failure = mesh.fail(mesh.trips.RequestTrip(request_trip("passengers/nobody")))

    assert failure.code is grpc.StatusCode.NOT_FOUND
    assert (failure.info.reason, failure.info.domain) == ("PASSENGER_NOT_FOUND", DOMAIN)
    assert get_driver(mesh, driver(mesh, NEARER)).status == AVAILABLE


def test_bad_input_names_the_fields(mesh):
    rider = passenger(mesh)
    bad = request_trip(
        rider, pickup=LatLng(latitude=95, longitude=0), dropoff=LatLng(latitude=0, longitude=-181)
    )
    failure = mesh.fail(mesh.trips.RequestTrip(bad))
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "INVALID_LOCATION"
    assert failure.fields == ["pickup.latitude", "dropoff.longitude"]

    missing = mesh.fail(mesh.trips.RequestTrip(pb.RequestTripRequest(passenger="people/1")))
    assert set(missing.fields) == {"passenger", "pickup", "dropoff", "payment_method"}

    unknown = mesh.fail(mesh.trips.GetTrip(pb.GetTripRequest(name="trips/nope")))
    assert (unknown.code, unknown.info.reason) == (grpc.StatusCode.NOT_FOUND, "TRIP_NOT_FOUND")
    too_long = mesh.fail(mesh.trips.CancelTrip(pb.CancelTripRequest(name="trips/nope", reason="x" * 501)))
    assert too_long.fields == ["reason"]


def test_illegal_transitions_say_why_and_the_state(mesh):
    rider = passenger(mesh)
    driver(mesh, NEAR)
    trip = request(mesh, rider)

    def refused(call, reason: str, state: str) -> None:
        failure = mesh.fail(call(trip.name))
        assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
        assert (failure.info.reason, dict(failure.info.metadata)) == (reason, {"state": state})

    def try_start(name):
        return mesh.trips.StartTrip(pb.StartTripRequest(name=name))

    def try_complete(name):
        return mesh.trips.CompleteTrip(pb.CompleteTripRequest(name=name))

    def try_accept(name):
        return mesh.trips.AcceptTrip(pb.AcceptTripRequest(name=name))

    def try_cancel(name):
        return mesh.trips.CancelTrip(pb.CancelTripRequest(name=name))

    refused(try_start, "TRIP_NOT_ACCEPTED", "TRIP_STATE_DRIVER_ASSIGNED")
    refused(try_complete, "TRIP_NOT_IN_PROGRESS", "TRIP_STATE_DRIVER_ASSIGNED")
    accept(mesh, trip.name)
    refused(try_accept, "TRIP_NOT_ASSIGNED", "TRIP_STATE_ACCEPTED")
    start(mesh, trip.name)
    refused(try_cancel, "TRIP_NOT_CANCELLABLE", "TRIP_STATE_IN_PROGRESS")
    complete(mesh, trip.name)
    refused(try_complete, "TRIP_NOT_IN_PROGRESS", "TRIP_STATE_COMPLETED")
    refused(try_cancel, "TRIP_NOT_CANCELLABLE", "TRIP_STATE_COMPLETED")
    assert get(mesh, trip.name).state == pb.TRIP_STATE_COMPLETED


def test_cancel_frees_the_driver_for_the_next_trip(mesh):
    first, second = passenger(mesh, "a@example.com"), passenger(mesh, "b@example.com")
    dana = driver(mesh, NEAR)
    trip = request(mesh, first)
    accept(mesh, trip.name)

    cancelled = cancel(mesh, trip.name, reason="Passenger changed plans")

    assert cancelled.state == pb.TRIP_STATE_CANCELLED
    assert cancelled.cancel_reason == "Passenger changed plans"
    assert cancelled.end_time.seconds > 0
    assert cancelled.payment_state == pb.TRIP_PAYMENT_STATE_NOT_CHARGED
    assert not cancelled.invoice
    released(mesh, dana)
    assert "Trip cancelled" in notified(mesh, dana, "Trip cancelled")
    assert "Trip cancelled" in notified(mesh, first, "Trip cancelled")
    assert request(mesh, second).driver == dana


def test_every_mutating_call_replays_its_first_answer(mesh):
    rider = passenger(mesh)
    dana = driver(mesh, NEAR)
    driver(mesh, NEARER)

    trip = request(mesh, rider, request_id="req-1")
    assert request(mesh, rider, request_id="req-1") == trip
    steps = [
        (accept, "acc-1"),
        (start, "start-1"),
        (complete, "done-1"),
    ]
    for step, key in steps:
        first = step(mesh, trip.name, request_id=key)
        assert step(mesh, trip.name, request_id=key) == first
    assert list_trips(mesh, passenger=rider) == [[trip.name]]
    done = get(mesh, trip.name)
    invoices = mesh.call(mesh.billing.ListInvoices(billing_pb2.ListInvoicesRequest(trip=trip.name)))
    assert len(invoices.invoices) == 1
    payments = mesh.call(mesh.payments.ListPayments(payments_pb2.ListPaymentsRequest(invoice=done.invoice)))
    assert len(payments.payments) == 1
    released(mesh, dana)

    other = request(mesh, rider)
    first = cancel(mesh, other.name, reason="r", request_id="can-1")
    assert cancel(mesh, other.name, reason="r", request_id="can-1") == first

    reused = mesh.fail(mesh.trips.RequestTrip(request_trip(rider, "pm_card_declined", request_id="req-1")))
    assert (reused.code, reused.info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    changed = pb.CancelTripRequest(name=other.name, reason="x", request_id="can-1")
    reused = mesh.fail(mesh.trips.CancelTrip(changed))
    assert reused.info.reason == "REQUEST_ID_REUSED"


def test_list_filters_by_passenger_and_driver_one_page_at_a_time(mesh):
    riders = [passenger(mesh, f"p{i}@example.com") for i in range(3)]
    drivers = [driver(mesh, NEAR, f"D{i}") for i in range(2)]
    made = []
    for index in range(5):
        trip = request(mesh, riders[index % 3])
        made.append(trip)
        cancel(mesh, trip.name)
        released(mesh, trip.driver)  # for the next request (two drivers)

    names = [t.name for t in made]
    assert list_trips(mesh, page_size=2) == [names[0:2], names[2:4], names[4:]]
    assert list_trips(mesh, passenger=riders[0]) == [[made[0].name, made[3].name]]
    by_driver = [t.name for t in made if t.driver == drivers[1]]
    assert list_trips(mesh, driver=drivers[1]) == [by_driver]
    both = [t.name for t in made if t.passenger == riders[1] and t.driver == drivers[0]]
    assert list_trips(mesh, passenger=riders[1], driver=drivers[0]) == [both]

    first = mesh.call(mesh.trips.ListTrips(pb.ListTripsRequest(passenger=riders[0], page_size=1)))
    other_filter = pb.ListTripsRequest(passenger=riders[1], page_size=1, page_token=first.next_page_token)
    failure = mesh.fail(mesh.trips.ListTrips(other_filter))
    assert (failure.code, failure.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


def test_trips_survive_a_restart_of_the_trip_service(mesh):
    rider = passenger(mesh)
    driver(mesh, NEAR)
    trip = request(mesh, rider, request_id="req-1")
    accepted = accept(mesh, trip.name)

    mesh.stop("trips")
    mesh.start("trips")

    again = mesh.retry_unavailable(lambda: mesh.trips.GetTrip(pb.GetTripRequest(name=trip.name)), "trips")
    assert again == accepted
    assert request(mesh, rider, request_id="req-1") == trip
    assert start(mesh, trip.name).state == pb.TRIP_STATE_IN_PROGRESS


def test_two_requests_racing_for_the_same_drivers_each_get_one(mesh):
    riders = [passenger(mesh, "a@example.com"), passenger(mesh, "b@example.com")]
    drivers = {driver(mesh, NEAR, "One"), driver(mesh, NEAR, "Two")}

    async def both() -> list[pb.Trip]:
        return list(await asyncio.gather(*(mesh.trips.RequestTrip(request_trip(r)) for r in riders)))

    trips = mesh.call(both())

    assert {t.driver for t in trips} == drivers
    for trip in trips:
        assert get_driver(mesh, trip.driver).current_trip == trip.name


def test_more_riders_racing_than_one_search_finds_drivers_for_all_get_one(mesh):
    # Each RequestTrip finds the nearest 10 drivers; 14 riders at once take them from each other.
    riders = [passenger(mesh, f"rider{n}@example.com") for n in range(14)]
    drivers = {driver(mesh, NEAR, f"Driver {n}") for n in range(14)}

    async def all_at_once() -> list[pb.Trip]:
        return list(await asyncio.gather(*(mesh.trips.RequestTrip(request_trip(r)) for r in riders)))

    trips = mesh.call(all_at_once())

    assert {t.driver for t in trips} == drivers
    failure = mesh.fail(mesh.trips.RequestTrip(request_trip(riders[0])))
    assert failure.info.reason == "NO_DRIVER_AVAILABLE"
