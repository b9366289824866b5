"""Driving trips through a real mesh with the real grpcurl: people, places, each trip RPC.

Every call goes through `Grpcurl`, so what the tests see is what a grpcurl
user sees: proto3 JSON with lowerCamel names, enums by name, int64 as strings.
Places come from `spot()`, each far (tens of km) from every other, so tests
sharing one mesh never match each other's drivers.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .conftest import COMMAND_TIMEOUT, Background, Grpcurl, Mesh, Status, wait_until

Json = dict[str, Any]

SERVICES = {
    "passengers": "rideshare.passengers.v1.PassengerService",
    "drivers": "rideshare.drivers.v1.DriverService",
    "trips": "rideshare.trips.v1.TripService",
    "billing": "rideshare.billing.v1.BillingService",
    "payments": "rideshare.payments.v1.PaymentService",
    "notifications": "rideshare.notifications.v1.NotificationService",
}

ASSIGNED = "TRIP_STATE_DRIVER_ASSIGNED"
ACCEPTED = "TRIP_STATE_ACCEPTED"
IN_PROGRESS = "TRIP_STATE_IN_PROGRESS"
COMPLETED = "TRIP_STATE_COMPLETED"

RECEIPT = "Your receipt"
NEW_TRIP = "New trip"

#: How long the trip service's outbox may take to deliver a notification in a test.
NOTIFY_TIMEOUT = 15.0

_spots = itertools.count()


def spot() -> Json:
    """A place no other call returns: 0.3 degrees of latitude (~33 km) from every other."""
    n = next(_spots)
    return {"latitude": round(-60.0 + 0.3 * (n % 400), 6), "longitude": round(-170.0 + 3.0 * (n // 400), 6)}


def near(place: Json, north_m: float) -> Json:
    """`north_m` meters north of `place` (a degree of latitude is ~111 km)."""
    return {"latitude": round(place["latitude"] + north_m / 111_195.0, 6), "longitude": place["longitude"]}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def money(value: Json) -> tuple[str, Decimal]:
    """(currency, amount) of a google.type.Money as grpcurl prints it (int64 units as a string)."""
    currency = value.get("currencyCode", value.get("currency_code", ""))
    return currency, Decimal(value.get("units", "0")) + Decimal(value.get("nanos", 0)) / 10**9


@dataclass
class Ride:
    """One trip driven from request to completion: every answer on the way."""

    passenger: Json
    driver: Json
    pickup: Json
    requested: Json
    accepted: Json
    started: Json
    completed: Json

    @property
    def name(self) -> str:
        name: str = self.completed["name"]
        return name


class Rides:
    """The mesh's RPCs as a grpcurl user calls them."""

    def __init__(self, mesh: Mesh, grpcurl: Grpcurl) -> None:
        self.mesh = mesh
        self.grpcurl = grpcurl

    def call(self, service: str, method: str, data: Json) -> Json:
        answer: Json = self.grpcurl.json(self.mesh.address(service), f"{SERVICES[service]}/{method}", data)
        return answer

    def error(self, service: str, method: str, data: Json) -> Status:
        return self.grpcurl.error(self.mesh.address(service), f"{SERVICES[service]}/{method}", data)

    def method_doc(self, service: str, method: str) -> str:
        """The comment of one RPC as `grpcurl describe <service>` shows it: what the contract promises."""
        code, out, err = self.grpcurl(self.mesh.address(service), "describe", SERVICES[service])
        assert code == 0, err
        lines = out.splitlines()
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"rpc {method} ("))
        doc: list[str] = []
        for line in reversed(lines[:at]):
            if not line.strip().startswith("//"):
                break
            doc.insert(0, line.strip().removeprefix("//").strip())
        return " ".join(doc)

    # --- people --------------------------------------------------------------------------------

    def passenger(self, display_name: str = "Ada Lovelace") -> Json:
        draft = {"display_name": display_name, "email": f"{unique('rider')}@example.com"}
        return self.call("passengers", "CreatePassenger", {"passenger": draft})

    def driver(self, at: Json | None, display_name: str = "Dana Driver") -> Json:
        """A new driver, AVAILABLE at `at` (OFFLINE if None)."""
        draft = {
            "display_name": display_name,
            "vehicle": {"make": "Toyota", "model": "Prius", "license_plate": unique("B-RS")},
        }
        driver = self.call("drivers", "CreateDriver", {"driver": draft})
        if at is not None:
            driver = self.call("drivers", "GoOnline", {"name": driver["name"], "location": at})
        return driver

    def get_driver(self, name: str) -> Json:
        return self.call("drivers", "GetDriver", {"name": name})

    def released(self, name: str, status: str = "DRIVER_STATUS_AVAILABLE") -> Json:
        """The driver once free (`status`, no trip): the trip service's outbox frees the driver shortly
        after the step that ended the trip (CancelTrip, CompleteTrip) answered."""
        found: list[Json] = []

        def free() -> bool:
            found[:] = [self.get_driver(name)]
            return found[0]["status"] == status and "currentTrip" not in found[0]

        assert wait_until(free, NOTIFY_TIMEOUT, interval=0.1), f"{name} not released: {found}"
        return found[0]

    # --- trips ---------------------------------------------------------------------------------

    def request(
        self, passenger: str, pickup: Json, payment_method: str = "pm_card_visa", request_id: str = ""
    ) -> Json:
        body = {
            "passenger": passenger,
            "pickup": pickup,
            "dropoff": near(pickup, 3000),
            "payment_method": payment_method,
        }
        if request_id:
            body["request_id"] = request_id
        return self.call("trips", "RequestTrip", body)

    def step(self, method: str, trip: str) -> Json:
        """AcceptTrip, StartTrip, CompleteTrip or GetTrip of one trip."""
        return self.call("trips", method, {"name": trip})

    def ride(
        self,
        payment_method: str = "pm_card_visa",
        *,
        passenger: Json | None = None,
        driver: Json | None = None,
        pickup: Json | None = None,
    ) -> Ride:
        """A whole trip at a fresh place (or the given one): request, accept, start, complete."""
        pickup = pickup or spot()
        passenger = passenger or self.passenger()
        driver = driver or self.driver(near(pickup, 200))
        requested = self.request(passenger["name"], pickup, payment_method)
        accepted = self.step("AcceptTrip", requested["name"])
        started = self.step("StartTrip", requested["name"])
        completed = self.step("CompleteTrip", requested["name"])
        return Ride(passenger, driver, pickup, requested, accepted, started, completed)

    def to_in_progress(self) -> tuple[Json, Json, Json]:
        """(passenger, driver, trip) with the trip started, ready to complete."""
        pickup = spot()
        passenger = self.passenger()
        driver = self.driver(near(pickup, 200))
        trip = self.request(passenger["name"], pickup)
        self.step("AcceptTrip", trip["name"])
        return passenger, driver, self.step("StartTrip", trip["name"])

    # --- what came of them -----------------------------------------------------------------------

    def invoices(self, **query: str) -> list[Json]:
        found: list[Json] = self.call("billing", "ListInvoices", {"page_size": 100, **query}).get(
            "invoices", []
        )
        return found

    def payments(self, invoice: str) -> list[Json]:
        found: list[Json] = self.call("payments", "ListPayments", {"invoice": invoice, "page_size": 100}).get(
            "payments", []
        )
        return found

    def notifications(self, recipient: str) -> list[Json]:
        found: list[Json] = self.call(
            "notifications", "ListNotifications", {"parent": recipient, "page_size": 1000}
        ).get("notifications", [])
        return found

    def wait_notification(self, recipient: str, trip: str, title: str) -> list[Json]:
        """The recipient's notifications of `trip`, once one titled `title` is among them.

        The trip service sends notifications from an outbox after the step
        committed, so they arrive shortly after the RPC that caused them.
        """
        found: list[Json] = []

        def arrived() -> bool:
            found[:] = [n for n in self.notifications(recipient) if n.get("trip") == trip]
            return any(n["title"] == title for n in found)

        assert wait_until(arrived, NOTIFY_TIMEOUT, interval=0.2), (
            f"no {title!r} notification for {recipient} about {trip} after {NOTIFY_TIMEOUT:.0f}s: {found}"
        )
        return found


class NotificationStream:
    """`grpcurl -v ... StreamNotifications` running in the background for one recipient."""

    HEADERS = "Response headers received:"
    MESSAGE = "Response contents:\n"

    def __init__(self, process: Background) -> None:
        self.process = process

    def wait_subscribed(self, timeout: float = COMMAND_TIMEOUT) -> None:
        """The server sends the response headers once the stream is subscribed: nothing later is missed."""
        assert self.process.wait_for(self.HEADERS, timeout), (
            f"the stream was not subscribed within {timeout:.0f}s\n{self.process.describe()}"
        )

    def received(self) -> list[Json]:
        """Every notification printed so far (a message still being written is left for later)."""
        out = self.process.stdout()
        decoder = json.JSONDecoder()
        messages: list[Json] = []
        start = out.find(self.MESSAGE)
        while start != -1:
            try:
                message, _ = decoder.raw_decode(out, start + len(self.MESSAGE))
            except ValueError:
                break
            messages.append(message)
            start = out.find(self.MESSAGE, start + len(self.MESSAGE))
        return messages

    def wait_for(self, title: str, trip: str, timeout: float = NOTIFY_TIMEOUT) -> Json:
        """The first streamed notification titled `title` about `trip`, polled for at most `timeout`."""

        def match() -> Json | None:
            return next((n for n in self.received() if n["title"] == title and n.get("trip") == trip), None)

        assert wait_until(lambda: match() is not None, timeout, interval=0.1), (
            f"the stream printed no {title!r} about {trip} within {timeout:.0f}s\n{self.process.describe()}"
        )
        found = match()
        assert found is not None
        return found
