"""A whole trip through six real services, driven by the real grpcurl as a user would.

One mesh (`rideshare_mesh`) serves the module and one paid ride (`visa_ride`)
is driven once; the tests then read what it left in each service. Tests that
need a trip of their own make one at a place of its own, so none depends on
another's data or order.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .conftest import Backgrounds, Grpcurl, Mesh
from .rides import (
    ACCEPTED,
    ASSIGNED,
    COMPLETED,
    IN_PROGRESS,
    NEW_TRIP,
    RECEIPT,
    SERVICES,
    NotificationStream,
    Ride,
    Rides,
    money,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rides(rideshare_mesh: Mesh, grpcurl: Grpcurl) -> Rides:
    return Rides(rideshare_mesh, grpcurl)


@pytest.fixture(scope="module")
def visa_ride(rides: Rides) -> Ride:
    """A passenger and a driver who just finished a trip paid with pm_card_visa."""
    return rides.ride("pm_card_visa")


def test_a_trip_moves_from_driver_assigned_to_completed(rides, visa_ride):
    ride = visa_ride
    trip = ride.name

    assert ride.requested["state"] == ASSIGNED
    assert ride.requested["passenger"] == ride.passenger["name"]
    assert ride.requested["driver"] == ride.driver["name"]
    assert ride.requested["paymentState"] == "TRIP_PAYMENT_STATE_NOT_CHARGED"
    assert "invoice" not in ride.requested
    currency, fare = money(ride.requested["fare"])
    assert currency == "EUR"
    assert fare > 0
    assert ride.accepted["state"] == ACCEPTED
    assert ride.started["state"] == IN_PROGRESS
    assert "startTime" in ride.started
    assert ride.completed["state"] == COMPLETED
    assert ride.completed["paymentState"] == "TRIP_PAYMENT_STATE_SUCCEEDED"
    assert ride.completed["invoice"].startswith("invoices/")
    assert ride.completed["payment"].startswith("payments/")
    assert ride.completed["fare"] == ride.requested["fare"], "the fare is fixed when the trip is requested"
    assert ride.completed["endTime"] >= ride.completed["startTime"]

    assert rides.step("GetTrip", trip) == ride.completed
    mine = rides.call("trips", "ListTrips", {"passenger": ride.passenger["name"]})["trips"]
    assert ride.completed in mine
    theirs = rides.call("trips", "ListTrips", {"driver": ride.driver["name"]})["trips"]
    assert ride.completed in theirs


def test_the_invoice_bills_exactly_the_trip_fare(rides, visa_ride):
    trip = visa_ride.completed

    invoice = rides.call("billing", "GetInvoice", {"name": trip["invoice"]})

    assert invoice["trip"] == trip["name"]
    assert invoice["passenger"] == trip["passenger"]
    assert invoice["amount"] == trip["fare"]
    assert rides.invoices(trip=trip["name"]) == [invoice]
    assert invoice in rides.invoices(passenger=trip["passenger"])


def test_the_payment_charged_the_invoice_amount_and_succeeded(rides, visa_ride):
    trip = visa_ride.completed

    payment = rides.call("payments", "GetPayment", {"name": trip["payment"]})

    assert payment["state"] == "PAYMENT_STATE_SUCCEEDED"
    assert payment["invoice"] == trip["invoice"]
    assert payment["amount"] == trip["fare"]
    assert payment["paymentMethod"] == "pm_card_visa"
    assert rides.payments(trip["invoice"]) == [payment]


def test_the_driver_is_available_again_where_the_trip_was(rides, visa_ride):
    driver = rides.released(visa_ride.driver["name"])

    found = rides.call(
        "drivers", "SearchDrivers", {"location": visa_ride.pickup, "radius_meters": 1000, "page_size": 10}
    )
    assert [r["driver"]["name"] for r in found["results"]] == [driver["name"]]


def test_a_driver_who_goes_offline_during_a_trip_is_offline_once_it_ends(rides):
    """What a driver app does for "last trip": never refused, and the trip's end (the outbox's
    release) takes the driver OFFLINE, not AVAILABLE for the next passenger."""
    _, driver, trip = rides.to_in_progress()

    going = rides.call("drivers", "GoOffline", {"name": driver["name"]})
    completed = rides.step("CompleteTrip", trip["name"])

    assert (going["status"], going["currentTrip"], going["offlineAfterTrip"]) == (
        "DRIVER_STATUS_ON_TRIP",
        trip["name"],
        True,
    )
    assert completed["state"] == COMPLETED
    assert "offlineAfterTrip" not in rides.released(driver["name"], "DRIVER_STATUS_OFFLINE")


def test_the_passenger_hears_of_every_step_ending_with_the_receipt(rides, visa_ride):
    trip = visa_ride.completed

    told = rides.wait_notification(trip["passenger"], trip["name"], RECEIPT)

    assert [n["title"] for n in told] == [
        "Driver assigned",
        "Your driver is on the way",
        "Your trip has started",
        RECEIPT,
    ]
    receipt = told[-1]
    assert receipt["recipient"] == trip["passenger"]
    assert receipt["name"].startswith(f"{trip['passenger']}/notifications/")
    assert trip["invoice"] in receipt["body"]
    assert trip["payment"] in receipt["body"]
    assert "pm_card_visa" in receipt["body"]


def test_the_driver_is_told_of_the_assignment(rides, visa_ride):
    trip = visa_ride.completed

    told = rides.wait_notification(trip["driver"], trip["name"], NEW_TRIP)

    assert [n["title"] for n in told] == [NEW_TRIP]
    assert told[0]["recipient"] == trip["driver"]
    assert "Accept the trip" in told[0]["body"]


def test_a_declined_card_completes_the_trip_with_a_declined_payment(rides, visa_ride):
    """A second trip of the same passenger at the same place, with a card that is declined."""
    rides.released(visa_ride.driver["name"])  # the first ride's driver, freed by the trips outbox
    ride = rides.ride(
        "pm_card_declined", passenger=visa_ride.passenger, driver=visa_ride.driver, pickup=visa_ride.pickup
    )
    trip = ride.completed

    assert ride.requested["driver"] == visa_ride.driver["name"], "the freed driver was matched again"
    assert trip["state"] == COMPLETED
    assert trip["paymentState"] == "TRIP_PAYMENT_STATE_DECLINED"
    payment = rides.call("payments", "GetPayment", {"name": trip["payment"]})
    assert payment["state"] == "PAYMENT_STATE_DECLINED"
    assert payment["declineReason"] == "card_declined"
    assert payment["amount"] == trip["fare"]
    assert rides.payments(trip["invoice"]) == [payment]
    invoice = rides.call("billing", "GetInvoice", {"name": trip["invoice"]})
    assert invoice["amount"] == trip["fare"]
    assert rides.invoices(trip=trip["name"]) == [invoice]
    rides.released(visa_ride.driver["name"])
    receipt = rides.wait_notification(trip["passenger"], trip["name"], RECEIPT)[-1]
    assert "declined" in receipt["body"]


@pytest.fixture
def stream_of(
    rideshare_mesh: Mesh, grpcurl: Grpcurl, background: Backgrounds
) -> Callable[[str], NotificationStream]:
    """Start `grpcurl -v ... StreamNotifications` for a recipient, in the background; stopped afterwards."""

    def start(recipient: str) -> NotificationStream:
        argv = grpcurl.argv(
            rideshare_mesh.address("notifications"),
            f"{SERVICES['notifications']}/StreamNotifications",
            data={"parent": recipient},
            flags=("-v",),
            max_time=120,
        )
        return NotificationStream(background(*argv))

    return start


def test_a_stream_receives_the_receipt_live(rides, stream_of):
    passenger, _, trip = rides.to_in_progress()
    stream = stream_of(passenger["name"])
    stream.wait_subscribed()

    completed = rides.step("CompleteTrip", trip["name"])
    streamed = stream.wait_for(RECEIPT, trip["name"])

    assert stream.process.process.poll() is None, "the stream ended by itself; it should run until cancelled"
    assert streamed["recipient"] == passenger["name"]
    assert completed["payment"] in streamed["body"]
    listed = rides.wait_notification(passenger["name"], trip["name"], RECEIPT)
    assert streamed == next(n for n in listed if n["title"] == RECEIPT), "the stream sends the stored one"
    assert stream.process.stop() is not None
