"""What the passenger and the driver are told at each step of a trip.

The passenger hears of every step; the driver of a new trip and of a
cancelled one (the contract's promise). Each `Notice` is written to the
outbox in the same transaction as the step, so it is sent exactly when the
step happened, however long the notification service is away.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.type.latlng_pb2 import LatLng
from rideshare.drivers.v1.drivers_pb2 import Driver
from rideshare.trips.v1.trips_pb2 import Trip

from services.domain.money import format_money

from .domain import DECLINED

MAX_TITLE = 100
MAX_BODY = 1000


@dataclass(frozen=True)
class Notice:
    """One notification to send: the fields of a `Notification` the sender sets."""

    recipient: str
    title: str
    body: str
    trip: str

    def __post_init__(self) -> None:
        if not 0 < len(self.title) <= MAX_TITLE or not 0 < len(self.body) <= MAX_BODY:
            raise ValueError(f"notice does not fit the notification limits: {self.title!r}")


def _place(point: LatLng) -> str:
    return f"{point.latitude:.5f}, {point.longitude:.5f}"


def assigned(trip: Trip, driver: Driver) -> list[Notice]:
    vehicle = driver.vehicle
    car = f"a {vehicle.make} {vehicle.model} ({vehicle.license_plate})" if vehicle.make else "their car"
    who = driver.display_name or "Your driver"
    return [
        Notice(
            trip.driver,
            "New trip",
            f"Pick up your passenger at {_place(trip.pickup)} and drive them to {_place(trip.dropoff)}. "
            f"Fare {format_money(trip.fare)}. Accept the trip to confirm.",
            trip.name,
        ),
        Notice(
            trip.passenger,
            "Driver assigned",
            f"{who} will pick you up in {car}. Fare {format_money(trip.fare)}.",
            trip.name,
        ),
    ]


def accepted(trip: Trip) -> list[Notice]:
    return [Notice(trip.passenger, "Your driver is on the way", "Your driver accepted the trip.", trip.name)]


def started(trip: Trip) -> list[Notice]:
    return [Notice(trip.passenger, "Your trip has started", "Enjoy the ride.", trip.name)]


def completed(trip: Trip) -> list[Notice]:
    """The receipt."""
    fare = format_money(trip.fare)
    if trip.payment_state == DECLINED:
        body = (
            f"You have arrived. The charge of {fare} to {trip.payment_method} was declined; "
            f"please pay invoice {trip.invoice} with another payment method."
        )
    else:
        body = (
            f"You have arrived. {fare} was charged to {trip.payment_method} "
            f"(invoice {trip.invoice}, payment {trip.payment})."
        )
    return [Notice(trip.passenger, "Your receipt", body, trip.name)]


def cancelled(trip: Trip) -> list[Notice]:
    why = f" Reason: {trip.cancel_reason}" if trip.cancel_reason else ""
    return [
        Notice(
            trip.passenger, "Trip cancelled", f"Your trip was cancelled. Nothing was charged.{why}", trip.name
        ),
        Notice(
            trip.driver, "Trip cancelled", f"The trip was cancelled; you are available again.{why}", trip.name
        ),
    ]
