"""Two trips replicas on one database (a SQLite file, or PostgreSQL): steps on one trip still run one
at a time, charge once, and the same request on both makes one trip."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from .conftest import Grpcurl, Mesh, MeshFactory, repo_client, repo_services
from .rides import ASSIGNED, COMPLETED, Rides, near, spot, unique

pytestmark = pytest.mark.e2e

COMPLETE = "rideshare.trips.v1.TripService/CompleteTrip"
REQUEST = "rideshare.trips.v1.TripService/RequestTrip"
LIST = "rideshare.trips.v1.TripService/ListTrips"


def replicated(mesh_factory: MeshFactory, storage: dict[str, Any]) -> tuple[Mesh, list[str]]:
    """The whole mesh with two trips replicas; their addresses."""
    services = repo_services()
    services["trips"]["replicas"] = 2
    mesh = mesh_factory(services, client=repo_client(), **storage).start()
    _, members = mesh.status()
    replicas = [str(m["address"]) for m in members if m["service"] == "trips"]
    assert len(replicas) == 2
    return mesh, replicas


def test_completing_one_trip_on_both_replicas_at_once_completes_it_once(
    mesh_factory: MeshFactory, storage: dict[str, Any], grpcurl: Grpcurl
):
    mesh, replicas = replicated(mesh_factory, storage)
    rides = Rides(mesh, grpcurl)
    _, driver, trip = rides.to_in_progress()

    # Four CompleteTrip calls at once, two on each replica, no request_id (each a new request).
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda a: grpcurl(a, COMPLETE, data={"name": trip["name"]}), replicas * 2))

    completed = [json.loads(out) for code, out, _ in answers if code == 0]
    refused = [err for code, _, err in answers if code != 0]
    assert len(completed) >= 1, answers
    assert all(t["state"] == COMPLETED for t in completed)
    assert all("TRIP_NOT_IN_PROGRESS" in err for err in refused), refused
    final = rides.step("GetTrip", trip["name"])
    assert final["state"] == COMPLETED
    assert [i["name"] for i in rides.invoices(trip=trip["name"])] == [final["invoice"]]
    assert [p["name"] for p in rides.payments(final["invoice"])] == [final["payment"]]
    rides.released(driver["name"])


def test_the_same_request_on_both_replicas_at_once_makes_one_trip(
    mesh_factory: MeshFactory, storage: dict[str, Any], grpcurl: Grpcurl
):
    """One write and one replay across replicas (AIP-155): the request's lock, then the request log."""
    mesh, replicas = replicated(mesh_factory, storage)
    rides = Rides(mesh, grpcurl)
    pickup = spot()
    passenger = rides.passenger()
    drivers = [rides.driver(near(pickup, 100 + 100 * n)) for n in range(2)]
    body = {
        "passenger": passenger["name"],
        "pickup": pickup,
        "dropoff": near(pickup, 3000),
        "payment_method": "pm_card_visa",
        "request_id": unique("ride"),
    }

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda a: grpcurl(a, REQUEST, data=body), replicas * 2))

    assert all(code == 0 for code, _, _ in answers), answers
    trips = [json.loads(out) for _, out, _ in answers]
    assert all(t == trips[0] for t in trips), "every call answers the one trip"
    assert trips[0]["state"] == ASSIGNED
    listed = rides.call("trips", "ListTrips", {"passenger": passenger["name"]}).get("trips", [])
    assert [t["name"] for t in listed] == [trips[0]["name"]]
    on_trip = [d for d in drivers if rides.get_driver(d["name"]).get("currentTrip") == trips[0]["name"]]
    assert len(on_trip) == 1, "one driver is held, for that trip"
