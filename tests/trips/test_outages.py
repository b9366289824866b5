"""A neighbour down in the middle of a trip: a clean UNAVAILABLE, nothing half-done, a retry finishes once."""

from __future__ import annotations

import grpc
from rideshare.drivers.v1.drivers_pb2 import DriverStatus
from rideshare.trips.v1 import trips_pb2 as pb

from .rides import (
    NEAR,
    driver,
    get,
    get_driver,
    in_progress,
    invoices_of,
    list_trips,
    notified,
    passenger,
    payments_of,
    released,
    request,
    request_trip,
)

AVAILABLE = DriverStatus.DRIVER_STATUS_AVAILABLE


def complete_request(trip: str) -> pb.CompleteTripRequest:
    return pb.CompleteTripRequest(name=trip, request_id=f"complete-{trip}")


def test_billing_down_at_completion_then_back_completes_exactly_once(mesh):
    rider = passenger(mesh)
    dana = driver(mesh, NEAR)
    trip = in_progress(mesh, rider)
    mesh.stop("billing")

    failure = mesh.fail(mesh.trips.CompleteTrip(complete_request(trip.name)))

    assert failure.code is grpc.StatusCode.UNAVAILABLE
    assert "billing" in failure.message
    assert dict(failure.info.metadata) == {"service": "billing"}
    halfway = get(mesh, trip.name)
    assert halfway.state == pb.TRIP_STATE_IN_PROGRESS
    assert (halfway.invoice, halfway.payment) == ("", "")
    assert halfway.payment_state == pb.TRIP_PAYMENT_STATE_NOT_CHARGED
    assert get_driver(mesh, dana).current_trip == trip.name

    mesh.start("billing")
    done = mesh.retry_unavailable(lambda: mesh.trips.CompleteTrip(complete_request(trip.name)), "completion")

    assert done.state == pb.TRIP_STATE_COMPLETED
    assert done.payment_state == pb.TRIP_PAYMENT_STATE_SUCCEEDED
    assert [i.name for i in invoices_of(mesh, trip.name)] == [done.invoice]
    assert [p.name for p in payments_of(mesh, done.invoice)] == [done.payment]
    released(mesh, dana)
    assert mesh.call(mesh.trips.CompleteTrip(complete_request(trip.name))) == done
    assert notified(mesh, rider, "Your receipt").count("Your receipt") == 1


def test_payments_down_after_invoicing_keeps_the_invoice_and_charges_once(mesh):
    rider = passenger(mesh)
    driver(mesh, NEAR)
    trip = in_progress(mesh, rider)
    mesh.stop("payments")

    failure = mesh.fail(mesh.trips.CompleteTrip(complete_request(trip.name)))

    assert failure.code is grpc.StatusCode.UNAVAILABLE
    assert "payments" in failure.message
    halfway = get(mesh, trip.name)
    assert halfway.state == pb.TRIP_STATE_IN_PROGRESS
    assert halfway.invoice, "the invoice made before the outage is recorded"
    assert (halfway.payment, halfway.payment_state) == ("", pb.TRIP_PAYMENT_STATE_NOT_CHARGED)

    mesh.start("payments")
    done = mesh.retry_unavailable(lambda: mesh.trips.CompleteTrip(complete_request(trip.name)), "completion")

    assert (done.state, done.invoice) == (pb.TRIP_STATE_COMPLETED, halfway.invoice)
    assert len(invoices_of(mesh, trip.name)) == 1
    assert [p.name for p in payments_of(mesh, done.invoice)] == [done.payment]


def test_a_retry_without_the_request_id_also_finishes_the_same_completion(mesh):
    rider = passenger(mesh)
    driver(mesh, NEAR)
    trip = in_progress(mesh, rider)
    mesh.stop("payments")
    mesh.fail(mesh.trips.CompleteTrip(pb.CompleteTripRequest(name=trip.name)))
    mesh.start("payments")

    done = mesh.retry_unavailable(
        lambda: mesh.trips.CompleteTrip(pb.CompleteTripRequest(name=trip.name)), "CompleteTrip"
    )

    assert done.state == pb.TRIP_STATE_COMPLETED
    assert len(invoices_of(mesh, trip.name)) == 1
    assert len(payments_of(mesh, done.invoice)) == 1


def test_drivers_down_at_request_is_unavailable_and_leaves_no_trip(mesh):
    rider = passenger(mesh)
    dana = driver(mesh, NEAR)
    mesh.stop("drivers")

    failure = mesh.fail(mesh.trips.RequestTrip(request_trip(rider, request_id="r1")))

    assert failure.code is grpc.StatusCode.UNAVAILABLE
    assert "drivers" in failure.message
    assert list_trips(mesh) == [[]]

    mesh.start("drivers")
    trip = mesh.retry_unavailable(
        lambda: mesh.trips.RequestTrip(request_trip(rider, request_id="r1")), "RequestTrip"
    )
    assert trip.driver == dana
    assert list_trips(mesh) == [[trip.name]]


def test_notifications_down_never_fail_a_trip_and_arrive_once_it_is_back(mesh):
    rider = passenger(mesh)
    dana = driver(mesh, NEAR)
    mesh.stop("notifications")

    trip = in_progress(mesh, rider)
    done = mesh.call(mesh.trips.CompleteTrip(pb.CompleteTripRequest(name=trip.name)))
    assert done.state == pb.TRIP_STATE_COMPLETED

    mesh.start("notifications")

    assert notified(mesh, rider, "Your receipt") == [
        "Driver assigned",
        "Your driver is on the way",
        "Your trip has started",
        "Your receipt",
    ]
    assert notified(mesh, dana, "New trip") == ["New trip"]


def test_notifications_left_unsent_by_a_stopped_trip_service_are_sent_after_its_restart(mesh):
    rider = passenger(mesh)
    driver(mesh, NEAR)
    mesh.stop("notifications")
    request(mesh, rider)
    mesh.stop("trips")

    mesh.start("notifications")
    mesh.start("trips")

    assert notified(mesh, rider, "Driver assigned") == ["Driver assigned"]
