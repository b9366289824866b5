"""Shorthands for driving the real mesh in the trip tests: people, places, and each trip RPC."""

from __future__ import annotations

import grpc
from google.type.latlng_pb2 import LatLng
from rideshare.billing.v1 import billing_pb2
from rideshare.drivers.v1 import drivers_pb2
from rideshare.notifications.v1 import notifications_pb2
from rideshare.passengers.v1 import passengers_pb2
from rideshare.payments.v1 import payments_pb2
from rideshare.trips.v1 import trips_pb2 as pb

from ..whole_mesh import Mesh

#: Alexanderplatz, Berlin; a driver 300 m north of it, another 6 km away; a dropoff 4 km south-east.
PICKUP = LatLng(latitude=52.5219, longitude=13.4132)
NEAR = LatLng(latitude=52.5246, longitude=13.4132)
NEARER = LatLng(latitude=52.5225, longitude=13.4132)
FAR = LatLng(latitude=52.5759, longitude=13.4132)
DROPOFF = LatLng(latitude=52.4962, longitude=13.4500)

DOMAIN = "trips.rideshare"


def passenger(mesh: Mesh, email: str = "ada@example.com") -> str:
    made = mesh.call(
        mesh.passengers.CreatePassenger(
            passengers_pb2.CreatePassengerRequest(
                passenger=passengers_pb2.Passenger(display_name="Ada", email=email)
            )
        )
    )
    return str(made.name)


def driver(mesh: Mesh, at: LatLng | None = NEAR, name: str = "Dana") -> str:
    """A driver, AVAILABLE at `at` (OFFLINE if None)."""
    made = mesh.call(
        mesh.drivers.CreateDriver(
            drivers_pb2.CreateDriverRequest(
                driver=drivers_pb2.Driver(
                    display_name=name,
                    vehicle=drivers_pb2.Vehicle(make="Toyota", model="Prius", license_plate="B-RS 1234"),
                )
            )
        )
    )
    if at is not None:
        mesh.call(mesh.drivers.GoOnline(drivers_pb2.GoOnlineRequest(name=made.name, location=at)))
    return str(made.name)


def get_driver(mesh: Mesh, name: str) -> drivers_pb2.Driver:
    return mesh.call(mesh.drivers.GetDriver(drivers_pb2.GetDriverRequest(name=name)))


def released(mesh: Mesh, name: str) -> drivers_pb2.Driver:
    """The driver once AVAILABLE with no trip: the trip service's outbox frees a driver right after
    the step that ends the trip (CancelTrip, CompleteTrip) has answered."""

    async def free() -> drivers_pb2.Driver | None:
        found = await mesh.drivers.GetDriver(drivers_pb2.GetDriverRequest(name=name))
        return (
            found if (found.status, found.current_trip) == (drivers_pb2.DRIVER_STATUS_AVAILABLE, "") else None
        )

    found: drivers_pb2.Driver = mesh.eventually(free, f"{name} released")
    return found


def request_trip(
    rider: str, payment_method: str = "pm_card_visa", request_id: str = "", **fields
) -> pb.RequestTripRequest:
    values = {"pickup": PICKUP, "dropoff": DROPOFF}
    values.update(fields)
    return pb.RequestTripRequest(
        passenger=rider, payment_method=payment_method, request_id=request_id, **values
    )


def request(mesh: Mesh, rider: str, **options) -> pb.Trip:
    return mesh.call(mesh.trips.RequestTrip(request_trip(rider, **options)))


def accept(mesh: Mesh, trip: str, request_id: str = "") -> pb.Trip:
    return mesh.call(mesh.trips.AcceptTrip(pb.AcceptTripRequest(name=trip, request_id=request_id)))


def start(mesh: Mesh, trip: str, request_id: str = "") -> pb.Trip:
    return mesh.call(mesh.trips.StartTrip(pb.StartTripRequest(name=trip, request_id=request_id)))


def complete(mesh: Mesh, trip: str, request_id: str = "") -> pb.Trip:
    return mesh.call(mesh.trips.CompleteTrip(pb.CompleteTripRequest(name=trip, request_id=request_id)))


def cancel(mesh: Mesh, trip: str, reason: str = "", request_id: str = "") -> pb.Trip:
    rpc = pb.CancelTripRequest(name=trip, reason=reason, request_id=request_id)
    return mesh.call(mesh.trips.CancelTrip(rpc))


def get(mesh: Mesh, trip: str) -> pb.Trip:
    return mesh.call(mesh.trips.GetTrip(pb.GetTripRequest(name=trip)))


def in_progress(mesh: Mesh, rider: str, **options) -> pb.Trip:
    trip = request(mesh, rider, **options)
    accept(mesh, trip.name)
    return start(mesh, trip.name)


def list_trips(mesh: Mesh, passenger: str = "", driver: str = "", page_size: int = 0) -> list[list[str]]:
    """The trip names on each page, following next_page_token to the end."""
    pages, token = [], ""
    while True:
        response = mesh.call(
            mesh.trips.ListTrips(
                pb.ListTripsRequest(passenger=passenger, driver=driver, page_size=page_size, page_token=token)
            )
        )
        pages.append([t.name for t in response.trips])
        token = response.next_page_token
        if not token:
            return pages


def invoices_of(mesh: Mesh, trip: str) -> list[billing_pb2.Invoice]:
    return list(mesh.call(mesh.billing.ListInvoices(billing_pb2.ListInvoicesRequest(trip=trip))).invoices)


def payments_of(mesh: Mesh, invoice: str) -> list[payments_pb2.Payment]:
    response = mesh.call(mesh.payments.ListPayments(payments_pb2.ListPaymentsRequest(invoice=invoice)))
    return list(response.payments)


async def titles(mesh: Mesh, recipient: str) -> list[str]:
    response = await mesh.notifications.ListNotifications(
        notifications_pb2.ListNotificationsRequest(parent=recipient)
    )
    return [n.title for n in response.notifications]


def notified(mesh: Mesh, recipient: str, title: str) -> list[str]:
    """The recipient's notification titles once `title` is among them (the outbox sends in the background)."""

    async def check() -> list[str]:
        try:
            found = await titles(mesh, recipient)
        except grpc.aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
            return []
        return found if title in found else []

    return mesh.eventually(check, f"{title!r} for {recipient}")
