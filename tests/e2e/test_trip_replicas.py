"""Two trips replicas on one database: steps on one trip still run one at a time, and charge once."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Grpcurl, MeshFactory, repo_client, repo_services
from .rides import COMPLETED, Rides

pytestmark = pytest.mark.e2e

COMPLETE = "rideshare.trips.v1.TripService/CompleteTrip"


def test_completing_one_trip_on_both_replicas_at_once_completes_it_once(
    mesh_factory: MeshFactory, grpcurl: Grpcurl
):
    services = repo_services()
    services["trips"]["replicas"] = 2
    mesh = mesh_factory(services, client=repo_client()).start()
    rides = Rides(mesh, grpcurl)
    _, driver, trip = rides.to_in_progress()
    _, members = mesh.status()
    replicas = [str(m["address"]) for m in members if m["service"] == "trips"]
    assert len(replicas) == 2

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
    assert rides.get_driver(driver["name"])["status"] == "DRIVER_STATUS_AVAILABLE"
