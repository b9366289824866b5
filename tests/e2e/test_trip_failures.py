"""When things go wrong: restarts, a dead billing service, repeated and refused requests.

Tests that stop or kill services start a mesh of their own, on each storage
engine (`storage`); the rest share `rideshare_mesh` (also on both), each with
people and places of its own.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import (
    START_TIMEOUT,
    Grpcurl,
    Mesh,
    listening,
    process_alive,
    repo_client,
    repo_services,
    wait_until,
)
from .rides import (
    ACCEPTED,
    ASSIGNED,
    COMPLETED,
    IN_PROGRESS,
    NEW_TRIP,
    RECEIPT,
    Json,
    Rides,
    near,
    spot,
    unique,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rides(rideshare_mesh: Mesh, grpcurl: Grpcurl) -> Rides:
    return Rides(rideshare_mesh, grpcurl)


def whole_mesh(mesh_factory, storage: dict[str, Any]) -> Mesh:
    """A mesh of every service with the repository's settings on `storage`'s engine, for a test that
    breaks it."""
    # Members are stopped and started by hand here (the supervisor's restarts: test_mesh_restarts.py).
    mesh: Mesh = mesh_factory(
        repo_services(), client=repo_client(), supervisor={"restart": "no"}, **storage
    ).start()
    return mesh


# --- restart -------------------------------------------------------------------------------------


def test_a_restarted_mesh_finds_every_record(mesh_factory, storage, grpcurl):
    mesh = whole_mesh(mesh_factory, storage)
    rides = Rides(mesh, grpcurl)
    create = {
        "passenger": {"display_name": "Still Here", "email": f"{unique('still')}@example.com"},
        "request_id": str(uuid.uuid4()),
    }
    passenger = rides.call("passengers", "CreatePassenger", create)
    ride = rides.ride(passenger=passenger)
    trip = ride.completed
    rides.wait_notification(trip["passenger"], trip["name"], RECEIPT)
    rides.wait_notification(trip["driver"], trip["name"], NEW_TRIP)
    rides.released(trip["driver"])  # the outbox's last delivery: nothing is left in flight

    def records() -> dict[str, object]:
        return {
            "passenger": rides.call("passengers", "GetPassenger", {"name": trip["passenger"]}),
            "driver": rides.get_driver(trip["driver"]),
            "trip": rides.step("GetTrip", trip["name"]),
            "trips": rides.call("trips", "ListTrips", {"passenger": trip["passenger"]}),
            "invoice": rides.call("billing", "GetInvoice", {"name": trip["invoice"]}),
            "payment": rides.call("payments", "GetPayment", {"name": trip["payment"]}),
            "payments": rides.payments(trip["invoice"]),
            "passenger notifications": rides.notifications(trip["passenger"]),
            "driver notifications": rides.notifications(trip["driver"]),
        }

    before = records()
    assert mesh.stop() == 0
    mesh.start()
    after = records()

    assert after == before
    assert before["trip"] == trip
    assert len(before["passenger notifications"]) == 4
    # A request_id is remembered across the restart: the repeat gets the first answer, nothing new.
    assert rides.call("passengers", "CreatePassenger", create) == passenger
    # The restarted mesh keeps working: the same two people ride again.
    again = rides.ride(passenger=ride.passenger, driver=ride.driver, pickup=ride.pickup)
    assert again.completed["state"] == COMPLETED
    assert again.completed["driver"] == ride.driver["name"]


# --- billing down when the trip completes ------------------------------------------------------------


def pid_of(mesh: Mesh, service: str) -> int:
    """The service's pid as `mesh status --json` reports it."""
    _, members = mesh.status()
    pids = [m["pid"] for m in members if m["service"] == service and isinstance(m["pid"], int)]
    assert len(pids) == 1, f"mesh status shows no pid for {service}: {members}"
    pid: int = pids[0]
    return pid


def serving(mesh: Mesh, service: str) -> bool:
    _, members = mesh.status()
    return any(m["service"] == service and m["health"] == "SERVING" for m in members)


def complete_when_billing_answers(rides: Rides, request: Json, timeout: float = 15.0) -> Json:
    """CompleteTrip, repeated with the same request_id while it is UNAVAILABLE, as the contract says to.

    A restarted service is SERVING before the trip service's channel to it has
    reconnected (its reconnect backoff, up to 2 s, and retry throttling after
    the failures), so the first repeat may still find billing unreachable.
    """
    deadline = time.monotonic() + timeout
    while True:
        code, out, err = rides.grpcurl(
            rides.mesh.address("trips"), "rideshare.trips.v1.TripService/CompleteTrip", data=request
        )
        if code == 0:
            completed: Json = json.loads(out)
            return completed
        assert "Code: Unavailable" in err, err
        assert "billing" in err, err
        assert time.monotonic() < deadline, f"CompleteTrip still UNAVAILABLE after {timeout:.0f}s: {err}"
        time.sleep(0.2)


def test_completing_while_billing_is_down_fails_cleanly_then_completes_exactly_once(
    mesh_factory, storage, background, grpcurl
):
    mesh = whole_mesh(mesh_factory, storage)
    rides = Rides(mesh, grpcurl)
    passenger, driver, trip = rides.to_in_progress()
    billing = pid_of(mesh, "billing")

    os.kill(billing, signal.SIGKILL)
    assert wait_until(lambda: not process_alive(billing) and not mesh.listening("billing"), 10), (
        "billing still runs after SIGKILL"
    )

    complete = {"name": trip["name"], "request_id": str(uuid.uuid4())}
    failure = rides.error("trips", "CompleteTrip", complete)
    assert failure.code == "UNAVAILABLE"
    assert failure.domain == "trips.rideshare"
    assert failure.metadata.get("service") == "billing"
    assert "billing" in failure.message
    unchanged = rides.step("GetTrip", trip["name"])
    assert unchanged["state"] == IN_PROGRESS
    assert unchanged["paymentState"] == "TRIP_PAYMENT_STATE_NOT_CHARGED"
    assert "invoice" not in unchanged
    assert "payment" not in unchanged
    assert rides.get_driver(driver["name"])["status"] == "DRIVER_STATUS_ON_TRIP"

    restarted = background.serve(mesh, "billing")
    assert wait_until(lambda: serving(mesh, "billing") or restarted.process.poll() is not None, START_TIMEOUT)
    assert serving(mesh, "billing"), f"billing did not come back\n{restarted.describe()}"

    completed = complete_when_billing_answers(rides, complete)

    assert completed["state"] == COMPLETED
    assert completed["paymentState"] == "TRIP_PAYMENT_STATE_SUCCEEDED"
    invoices = rides.invoices(trip=trip["name"])
    assert [i["name"] for i in invoices] == [completed["invoice"]]
    assert invoices[0]["amount"] == completed["fare"]
    payments = rides.payments(completed["invoice"])
    assert [p["name"] for p in payments] == [completed["payment"]]
    assert payments[0]["state"] == "PAYMENT_STATE_SUCCEEDED"
    rides.released(driver["name"])
    rides.wait_notification(passenger["name"], trip["name"], RECEIPT)

    # Completing it once more is refused and charges nothing.
    again = rides.error("trips", "CompleteTrip", {"name": trip["name"]})
    assert (again.code, again.reason) == ("FAILED_PRECONDITION", "TRIP_NOT_IN_PROGRESS")
    assert len(rides.invoices(trip=trip["name"])) == 1
    assert len(rides.payments(completed["invoice"])) == 1

    assert restarted.stop() == 0, restarted.describe()
    assert wait_until(lambda: not listening(mesh.port("billing")), 10)


# --- idempotent replays of every create ------------------------------------------------------------


@dataclass
class Create:
    """A create RPC with a request_id: the request, and another request under the same request_id."""

    service: str
    method: str
    make: Callable[[Rides], tuple[Json, Json]]


def _passenger(rides: Rides) -> tuple[Json, Json]:
    email = f"{unique('once')}@example.com"
    return (
        {"passenger": {"display_name": "Once", "email": email}},
        {"passenger": {"display_name": "Twice", "email": email}},
    )


def _driver(rides: Rides) -> tuple[Json, Json]:
    vehicle = {"make": "Skoda", "model": "Octavia", "license_plate": unique("B-ID")}
    return (
        {"driver": {"display_name": "Once", "vehicle": vehicle}},
        {"driver": {"display_name": "Twice", "vehicle": vehicle}},
    )


def _trip(rides: Rides) -> tuple[Json, Json]:
    pickup = spot()
    rides.driver(near(pickup, 200))
    passenger = rides.passenger()["name"]
    body = {
        "passenger": passenger,
        "pickup": pickup,
        "dropoff": near(pickup, 3000),
        "payment_method": "pm_card_visa",
    }
    return body, {**body, "dropoff": near(pickup, 4000)}


def _invoice(rides: Rides) -> tuple[Json, Json]:
    pickup = spot()
    invoice = {
        "trip": f"trips/{uuid.uuid4().hex}",
        "passenger": f"passengers/{uuid.uuid4().hex}",
        "pickup": pickup,
        "dropoff": near(pickup, 3000),
    }
    return {"invoice": invoice}, {"invoice": {**invoice, "dropoff": near(pickup, 4000)}}


def _payment(rides: Rides) -> tuple[Json, Json]:
    invoice = rides.call("billing", "CreateInvoice", _invoice(rides)[0])
    payment = {"invoice": invoice["name"], "payment_method": "pm_card_visa"}
    return {"payment": payment}, {"payment": {**payment, "payment_method": "pm_card_declined"}}


def _notification(rides: Rides) -> tuple[Json, Json]:
    note = {"recipient": f"passengers/{uuid.uuid4().hex}", "title": "Hello", "body": "Once only."}
    return {"notification": note}, {"notification": {**note, "body": "Twice?"}}


CREATES = [
    Create("passengers", "CreatePassenger", _passenger),
    Create("drivers", "CreateDriver", _driver),
    Create("trips", "RequestTrip", _trip),
    Create("billing", "CreateInvoice", _invoice),
    Create("payments", "CreatePayment", _payment),
    Create("notifications", "SendNotification", _notification),
]


@pytest.mark.parametrize("create", CREATES, ids=[c.method for c in CREATES])
def test_a_repeated_request_id_returns_the_first_answer(rides, create):
    request, _ = create.make(rides)
    request["request_id"] = str(uuid.uuid4())

    first = rides.call(create.service, create.method, request)
    again = rides.call(create.service, create.method, request)

    assert again == first


@pytest.mark.parametrize("create", CREATES, ids=[c.method for c in CREATES])
def test_a_request_id_reused_for_another_request_is_refused(rides, create):
    request, other = create.make(rides)
    request_id = str(uuid.uuid4())
    first = rides.call(create.service, create.method, {**request, "request_id": request_id})

    refused = rides.error(create.service, create.method, {**other, "request_id": request_id})

    assert refused.code == "INVALID_ARGUMENT"
    assert refused.reason == "REQUEST_ID_REUSED"
    assert refused.domain == f"{create.service}.rideshare"
    assert "request_id" in refused.violations
    assert rides.call(create.service, create.method, {**request, "request_id": request_id}) == first


def test_a_repeated_request_trip_assigns_one_trip_and_charges_once(rides):
    """The exactly-once promises end to end: one trip per request_id, one payment per completion."""
    request, _ = _trip(rides)
    request["request_id"] = str(uuid.uuid4())
    trip = rides.call("trips", "RequestTrip", request)
    assert rides.call("trips", "RequestTrip", request) == trip

    assert rides.call("trips", "ListTrips", {"passenger": request["passenger"]})["trips"] == [
        rides.step("GetTrip", trip["name"])
    ]
    rides.step("AcceptTrip", trip["name"])
    rides.step("StartTrip", trip["name"])
    complete = {"name": trip["name"], "request_id": str(uuid.uuid4())}
    completed = rides.call("trips", "CompleteTrip", complete)
    assert rides.call("trips", "CompleteTrip", complete) == completed
    assert len(rides.invoices(trip=trip["name"])) == 1
    assert len(rides.payments(completed["invoice"])) == 1


# --- refusals ----------------------------------------------------------------------------------------


def test_no_driver_near_the_pickup_is_no_driver_available_and_creates_no_trip(rides):
    pickup = spot()
    passenger = rides.passenger()
    far = rides.driver(near(pickup, 6000))  # online, but outside the 5 km search radius
    rides.driver(None)  # registered, never online

    refused = rides.error(
        "trips",
        "RequestTrip",
        {
            "passenger": passenger["name"],
            "pickup": pickup,
            "dropoff": near(pickup, 3000),
            "payment_method": "pm_card_visa",
        },
    )

    assert refused.code == "FAILED_PRECONDITION"
    assert refused.reason == "NO_DRIVER_AVAILABLE"
    assert refused.domain == "trips.rideshare"
    assert "NO_DRIVER_AVAILABLE" in rides.method_doc("trips", "RequestTrip"), "the contract names the reason"
    assert rides.call("trips", "ListTrips", {"passenger": passenger["name"]}) == {}
    assert rides.get_driver(far["name"])["status"] == "DRIVER_STATUS_AVAILABLE"


@pytest.mark.parametrize(
    ("accept_first", "method", "reason"),
    [
        pytest.param(False, "StartTrip", "TRIP_NOT_ACCEPTED", id="start-before-accept"),
        pytest.param(False, "CompleteTrip", "TRIP_NOT_IN_PROGRESS", id="complete-before-start"),
        pytest.param(True, "AcceptTrip", "TRIP_NOT_ASSIGNED", id="accept-twice"),
    ],
)
def test_an_illegal_transition_is_failed_precondition_with_the_reason_of_the_contract(
    rides, accept_first, method, reason
):
    pickup = spot()
    rides.driver(near(pickup, 200))
    trip = rides.request(rides.passenger()["name"], pickup)
    if accept_first:
        trip = rides.step("AcceptTrip", trip["name"])

    refused = rides.error("trips", method, {"name": trip["name"]})

    assert refused.code == "FAILED_PRECONDITION"
    assert refused.reason == reason
    assert refused.domain == "trips.rideshare"
    assert refused.metadata.get("state") == (ACCEPTED if accept_first else ASSIGNED)
    assert reason in rides.method_doc("trips", method), f"the proto documents {reason} on {method}"
    assert rides.step("GetTrip", trip["name"]) == trip, "a refused step changes nothing"
