"""PassengerService over REST: the real service (in-process) behind the real gateway (uvicorn)."""

from __future__ import annotations

import re

NAME = re.compile(r"^passengers/[0-9a-f]{32}$")


def create(gateway, **fields):
    body = {"displayName": "Ada Lovelace", "email": "ada@example.com", **fields}
    response = gateway.request("POST", "/v1/passengers", body)
    assert response.status == 200, response.body
    return response.json


def test_create_get_update_list_delete_over_rest(passengers_gateway):
    created = create(passengers_gateway, phone="+447700900123")
    assert NAME.match(created["name"])
    assert created["displayName"] == "Ada Lovelace"
    assert created["createTime"].endswith("Z")

    fetched = passengers_gateway.request("GET", f"/v1/{created['name']}")
    assert (fetched.status, fetched.json) == (200, created)

    # no update_mask: the mask is the fields sent in the body
    patched = passengers_gateway.request("PATCH", f"/v1/{created['name']}", {"displayName": "Countess"})
    assert patched.status == 200
    assert patched.json["displayName"] == "Countess"
    assert patched.json["email"] == "ada@example.com"
    assert patched.json["phone"] == "+447700900123"

    # an explicit mask clears a field that is not sent
    cleared = passengers_gateway.request("PATCH", f"/v1/{created['name']}?update_mask=phone", {})
    assert (cleared.status, cleared.json["phone"]) == (200, "")

    listed = passengers_gateway.request("GET", "/v1/passengers?pageSize=1000")
    assert created["name"] in [p["name"] for p in listed.json["passengers"]]

    deleted = passengers_gateway.request("DELETE", f"/v1/{created['name']}")
    assert (deleted.status, deleted.json) == (200, {})
    gone = passengers_gateway.request("GET", f"/v1/{created['name']}")
    assert gone.status == 404
    assert gone.json["code"] == 5
    assert gone.json["details"][0]["domain"] == "passengers.rideshare"


def test_pages_follow_next_page_token(passengers_gateway):
    names = {create(passengers_gateway, email=f"p{i}@example.com")["name"] for i in range(3)}
    seen, token = [], ""
    while True:
        page = passengers_gateway.request("GET", f"/v1/passengers?page_size=2&page_token={token}").json
        assert len(page["passengers"]) <= 2
        seen += [p["name"] for p in page["passengers"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert names <= set(seen)


def test_a_request_id_replays_the_first_answer(passengers_gateway):
    body = {"displayName": "Once", "email": "once@example.com"}
    first = passengers_gateway.request("POST", "/v1/passengers?request_id=r-1", body)
    again = passengers_gateway.request("POST", "/v1/passengers?requestId=r-1", body)

    assert first.status == again.status == 200
    assert first.json == again.json


def test_service_validation_errors_arrive_as_400_with_the_field(passengers_gateway):
    response = passengers_gateway.request("POST", "/v1/passengers", {"displayName": "", "email": "x"})

    assert response.status == 400
    body = response.json
    assert body["code"] == 3
    violations = [v for d in body["details"] if "fieldViolations" in d for v in d["fieldViolations"]]
    assert "passenger.display_name" in [v["field"] for v in violations]


def test_a_bad_resource_name_is_a_404_from_the_gateway_or_400_from_the_service(passengers_gateway):
    assert passengers_gateway.request("GET", "/v1/drivers/x").status == 404
    assert passengers_gateway.request("GET", "/v1/passengers/a%2Fb").status in (400, 404)


def test_healthz_checks_the_passenger_service(passengers_gateway):
    response = passengers_gateway.request("GET", "/healthz")

    assert (response.status, response.json) == (
        200,
        {"status": "SERVING", "upstreams": {"passengers": "SERVING"}},
    )


def test_a_key_without_the_admin_scope_finds_no_operator_method(passengers_gateway):
    plain = {"x-api-key": passengers_gateway.new_key("app")}
    created = create(passengers_gateway, email="grace@example.com")

    # As if the methods did not exist: the path of CreatePassenger answers GET as any unknown method,
    listing = passengers_gateway.request("GET", "/v1/passengers", headers=plain)
    assert (listing.status, listing.headers["allow"]) == (405, "POST")
    # and SearchDrivers' path is not found at all.
    search = passengers_gateway.request("GET", "/v1/drivers:search?location.latitude=1", headers=plain)
    assert (search.status, search.json["code"]) == (404, 5)
    # A passenger's record is theirs: a key acting for nobody is told to sign in (test_ownership.py).
    reading = passengers_gateway.request("GET", f"/v1/{created['name']}", headers=plain)
    assert (reading.status, reading.json["details"][0]["reason"]) == (401, "SIGN_IN_REQUIRED")
    assert passengers_gateway.request("GET", f"/v1/{created['name']}").status == 200  # the admin key
    assert passengers_gateway.request("GET", "/v1/passengers").status == 200


def test_internal_methods_are_routed_for_no_key_at_all(passengers_gateway):
    invoice = {
        "trip": "trips/t1",
        "passenger": "passengers/p1",
        "amount": {"currencyCode": "EUR", "units": "1"},
    }
    for method, path, body in (
        ("POST", "/v1/invoices", invoice),
        ("POST", "/v1/payments", {"invoice": "invoices/i1"}),
        ("POST", "/v1/drivers:assignNearest", {"trip": "trips/t1", "radiusMeters": 1000}),
        ("POST", "/v1/drivers/d1:releaseTrip", {"trip": "trips/t1"}),
        ("POST", "/v1/notifications:batchSend", {"requests": []}),  # up to 100 messages to anyone
        ("POST", "/v1/drivers:batchReleaseTrips", {"requests": []}),  # free up to 100 drivers mid-trip
    ):
        response = passengers_gateway.request(method, path, body)  # with the admin key
        assert (response.status, response.json["code"]) == (404, 5), path
