"""Each caller only what is theirs, over REST: passengers and drivers sign in and the services enforce it.

The whole mesh runs behind the gateway with API keys on. Passenger A rides
with driver D1 from sign-up to payment, each with their own token through one
application's key (rides scope); passenger B and driver D2 are signed in too,
and try everything on A's and D1's data. Another's resource answers exactly as
a missing one: the same status and the same body, but for the name.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

import pytest

from . import harness

PICKUP = {"latitude": 48.8584, "longitude": 2.2945}
DROPOFF = {"latitude": 48.8606, "longitude": 2.3376}
MISSING = "0123456789abcdef0123456789abcdef"
_numbers = itertools.count()


@dataclass
class Person:
    """A signed-in passenger or driver: their resource and the headers that act for them."""

    resource: dict[str, Any]
    headers: dict[str, str]
    session: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.resource["name"])


@dataclass
class Town:
    gateway: harness.RunningGateway
    app: dict[str, str]
    plain: dict[str, str]
    admin: dict[str, str]
    a: Person
    b: Person
    d1: Person
    d2: Person
    trip: dict[str, Any]

    def as_(self, who: Person | dict[str, str], method: str, path: str, body: Any = None) -> harness.Response:
        headers = who.headers if isinstance(who, Person) else who
        return self.gateway.request(method, path, body, headers=headers)


def sign_up(gateway, app, kind: str, **fields) -> Person:
    email = f"{kind}{next(_numbers)}@example.com"
    account = {"email": email, "password": f"{kind} password"}
    created = gateway.request("POST", f"/v1/{kind}s", {**fields, **account}, headers=app)
    assert created.status == 200, created.body
    assert "password" not in created.json
    session = gateway.request("POST", f"/v1/{kind}s:signIn", account, headers=app)
    assert session.status == 200, session.body
    return Person(created.json, {**app, **harness.bearer(session.json)}, session.json)


def driver(gateway, app) -> Person:
    vehicle = {"make": "Renault", "model": "Zoe", "licensePlate": f"EV-{next(_numbers)}"}
    return sign_up(gateway, app, "driver", displayName="Dee", vehicle=vehicle)


@pytest.fixture(scope="module")
def town(background, tmp_path_factory) -> Any:
    with harness.whole_mesh(background, tmp_path_factory.mktemp("town")) as gateway:
        app = {"x-api-key": gateway.new_key("rider app", frozenset({"rides"}))}
        plain = {"x-api-key": gateway.new_key("plain app")}
        admin = {"x-api-key": gateway.new_key("operators", frozenset({"admin"}))}
        a = sign_up(gateway, app, "passenger", displayName="Ada", phone="+33612345678")
        b = sign_up(gateway, app, "passenger", displayName="Bea")
        d1, d2 = driver(gateway, app), driver(gateway, app)
        online = gateway.request("POST", f"/v1/{d1.name}:goOnline", {"location": PICKUP}, headers=d1.headers)
        assert online.status == 200, online.body
        ride = {"passenger": a.name, "pickup": PICKUP, "dropoff": DROPOFF, "paymentMethod": "pm_card_visa"}
        requested = gateway.request("POST", "/v1/trips", ride, headers=a.headers)
        assert requested.status == 200, requested.body
        assert requested.json["driver"] == d1.name
        yield Town(gateway, app, plain, admin, a, b, d1, d2, requested.json)


def same_as_missing(town: Town, who: Person, method: str, path: str, missing_path: str, body: Any = None):
    """`path` answers `who` exactly as `missing_path` (a resource that does not exist) does."""
    theirs = town.as_(who, method, path, body)
    missing = town.as_(who, method, missing_path, body)
    assert theirs.status == missing.status == 404, (theirs.body, missing.body)
    assert theirs.json == _renamed(missing.json, missing_path, path)
    return theirs


def _renamed(value: Any, old_path: str, new_path: str) -> Any:
    """The body with the resource id of one path swapped for the other's (the only difference allowed)."""
    swaps = [
        (old, new)
        for old, new in zip(re.split("[/:]", old_path), re.split("[/:]", new_path), strict=True)
        if old != new
    ]

    def change(text: str) -> str:
        for old, new in swaps:
            text = text.replace(old, new)
        return text

    return _walk(value, change)


def _walk(value: Any, change: Any) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {k: _walk(v, change) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, change) for v in value]
    return value


def test_a_passenger_reads_and_changes_only_their_own_record(town):
    assert town.as_(town.a, "GET", f"/v1/{town.a.name}").json["email"] == town.a.resource["email"]

    seen = same_as_missing(town, town.b, "GET", f"/v1/{town.a.name}", f"/v1/passengers/{MISSING}")
    assert town.a.resource["email"].encode() not in seen.body
    assert town.a.resource["phone"].encode() not in seen.body
    same_as_missing(
        town, town.b, "PATCH", f"/v1/{town.a.name}", f"/v1/passengers/{MISSING}", {"displayName": "Mine now"}
    )
    same_as_missing(town, town.b, "DELETE", f"/v1/{town.a.name}", f"/v1/passengers/{MISSING}")
    same_as_missing(town, town.d1, "GET", f"/v1/{town.a.name}", f"/v1/passengers/{MISSING}")
    assert town.as_(town.admin, "GET", f"/v1/{town.a.name}").json["email"] == town.a.resource["email"]


def test_only_operators_list_passengers_drivers_invoices_and_payments(town):
    for path in ("/v1/passengers", "/v1/drivers", "/v1/invoices", "/v1/payments"):
        listed = town.as_(town.b, "GET", path)
        assert listed.status in (404, 405), path  # not on the surface of a key without the admin scope
        assert town.a.resource["email"].encode() not in listed.body
        assert town.as_(town.admin, "GET", path).status == 200, path
    everyone = town.as_(town.admin, "GET", "/v1/passengers?pageSize=1000").json["passengers"]
    assert town.a.resource["email"] in [p["email"] for p in everyone]


def test_a_trip_is_its_passengers_and_its_drivers_only(town):
    trip = town.trip["name"]
    for who in (town.a, town.d1):
        assert town.as_(who, "GET", f"/v1/{trip}").json == town.trip
    for who in (town.b, town.d2):
        same_as_missing(town, who, "GET", f"/v1/{trip}", f"/v1/trips/{MISSING}")
        same_as_missing(town, who, "POST", f"/v1/{trip}:cancel", f"/v1/trips/{MISSING}:cancel", {})

    assert [t["name"] for t in town.as_(town.a, "GET", "/v1/trips").json["trips"]] == [trip]
    assert [t["name"] for t in town.as_(town.d1, "GET", "/v1/trips").json["trips"]] == [trip]
    assert town.as_(town.b, "GET", "/v1/trips").json["trips"] == []
    assert town.as_(town.b, "GET", f"/v1/trips?passenger={town.a.name}").json["trips"] == []
    assert town.as_(town.d2, "GET", f"/v1/trips?driver={town.d1.name}").json["trips"] == []
    assert trip in [t["name"] for t in town.as_(town.admin, "GET", "/v1/trips").json["trips"]]


def test_a_passenger_requests_trips_for_themselves_only(town):
    ride = {"passenger": town.a.name, "pickup": PICKUP, "dropoff": DROPOFF, "paymentMethod": "pm_card_visa"}

    for who in (town.b, town.d2):
        theirs = town.as_(who, "POST", "/v1/trips", ride)
        missing = town.as_(who, "POST", "/v1/trips", {**ride, "passenger": f"passengers/{MISSING}"})
        assert theirs.status == missing.status == 404
        assert theirs.json == _walk(missing.json, lambda t: t.replace(f"passengers/{MISSING}", town.a.name))
        assert theirs.json["details"][0]["reason"] == "PASSENGER_NOT_FOUND"


def test_the_ride_from_request_to_receipt_each_step_by_its_owner(town):
    trip = town.trip["name"]
    # Another driver cannot take the steps that are the trip's driver's; to them the trip does not exist.
    for step in ("accept", "start", "complete"):
        same_as_missing(town, town.d2, "POST", f"/v1/{trip}:{step}", f"/v1/trips/{MISSING}:{step}", {})
    refused = town.as_(town.a, "POST", f"/v1/{trip}:accept", {})
    assert (refused.status, refused.json["details"][0]["reason"]) == (403, "NOT_THE_TRIPS_DRIVER")

    for step, state in (("accept", "ACCEPTED"), ("start", "IN_PROGRESS"), ("complete", "COMPLETED")):
        answer = town.as_(town.d1, "POST", f"/v1/{trip}:{step}", {"requestId": f"{step}-1"})
        assert (answer.status, answer.json["state"]) == (200, f"TRIP_STATE_{state}"), answer.body
    completed = answer.json
    # A repeat gets its first answer (AIP-155), but only from the trip's own driver: to another who
    # knows the request_id, the trip still does not exist.
    assert town.as_(town.d1, "POST", f"/v1/{trip}:complete", {"requestId": "complete-1"}).json == completed
    for step in ("accept", "complete"):
        same_as_missing(
            town,
            town.d2,
            "POST",
            f"/v1/{trip}:{step}",
            f"/v1/trips/{MISSING}:{step}",
            {"requestId": f"{step}-1"},
        )

    invoice, payment = completed["invoice"], completed["payment"]
    assert town.as_(town.a, "GET", f"/v1/{invoice}").json["passenger"] == town.a.name
    assert town.as_(town.a, "GET", f"/v1/{payment}").json["invoice"] == invoice
    for who in (town.b, town.d1):
        same_as_missing(town, who, "GET", f"/v1/{invoice}", f"/v1/invoices/{MISSING}")
        same_as_missing(town, who, "GET", f"/v1/{payment}", f"/v1/payments/{MISSING}")
    assert town.as_(town.admin, "GET", f"/v1/{payment}").status == 200

    receipts = town.as_(town.a, "GET", f"/v1/{town.a.name}/notifications").json["notifications"]
    assert any(trip == n["trip"] for n in receipts)
    for who in (town.b, town.d1):
        same_as_missing(
            town,
            who,
            "GET",
            f"/v1/{town.a.name}/notifications",
            f"/v1/passengers/{MISSING}/notifications",
        )
    told = town.as_(town.d1, "GET", f"/v1/{town.d1.name}/notifications").json["notifications"]
    assert [n["trip"] for n in told] == [trip]


def test_a_stream_is_opened_only_for_ones_own_notifications(town):
    """Streams for others (or for nobody) are refused at once: nothing is held open for them."""
    for recipient in (town.a.name, f"passengers/{MISSING}"):
        refused = town.as_(town.b, "GET", f"/v1/{recipient}/notifications:stream")
        assert refused.status == 404
        assert refused.json["details"][0]["reason"] == "RECIPIENT_NOT_FOUND"
    opened = town.as_(town.b, "GET", f"/v1/{town.b.name}/notifications:stream?timeout=200ms")
    assert opened.status == 200
    assert opened.header("content-type") == "application/x-ndjson"


def test_a_driver_acts_only_on_their_own_record(town):
    where = {"location": PICKUP}
    same_as_missing(
        town, town.d2, "POST", f"/v1/{town.d1.name}:goOffline", f"/v1/drivers/{MISSING}:goOffline", {}
    )
    same_as_missing(
        town,
        town.d2,
        "POST",
        f"/v1/{town.d1.name}:updateLocation",
        f"/v1/drivers/{MISSING}:updateLocation",
        where,
    )
    same_as_missing(town, town.a, "GET", f"/v1/{town.d1.name}", f"/v1/drivers/{MISSING}")
    assert town.as_(town.d1, "GET", f"/v1/{town.d1.name}").json["email"] == town.d1.resource["email"]


def test_an_application_alone_acts_for_nobody(town):
    """A key without a user's token signs people up and in, and quotes fares; everything else is 401."""
    quote = town.as_(town.app, "POST", "/v1/fares:quote", {"pickup": PICKUP, "dropoff": DROPOFF})
    assert quote.status == 200
    for method, path in (
        ("GET", f"/v1/{town.a.name}"),
        ("GET", f"/v1/{town.trip['name']}"),
        ("GET", "/v1/trips"),
    ):
        for key in (town.app, town.plain):
            refused = town.as_(key, method, path)
            assert refused.status == 401, path
            assert refused.json["details"][0]["reason"] == "SIGN_IN_REQUIRED"


def test_a_plain_key_with_a_valid_token_is_403(town):
    refused = town.as_({**town.plain, **harness.bearer(town.a.session)}, "GET", f"/v1/{town.a.name}")

    assert refused.status == 403
    assert refused.json["details"][0]["reason"] == "RIDES_SCOPE_REQUIRED"


def test_an_expired_or_tampered_token_is_401(town):
    from services.runtime import tokens

    expired = tokens.Issuer(town.gateway.config, "passengers").issue(town.a.name, now=0).token
    tampered = town.a.session["accessToken"][:-6] + "AAAAAA"
    for token, reason in ((expired, "TOKEN_EXPIRED"), (tampered, "TOKEN_INVALID")):
        refused = town.as_({**town.app, "authorization": f"Bearer {token}"}, "GET", f"/v1/{town.a.name}")
        assert (refused.status, refused.json["details"][0]["reason"]) == (401, reason)


def test_a_refresh_token_works_once_over_rest(town):
    person = sign_up(town.gateway, town.app, "passenger", displayName="Cy")
    token = {"refreshToken": person.session["refreshToken"]}

    renewed = town.as_(town.app, "POST", "/v1/passengers:refreshSession", token)
    again = town.as_(town.app, "POST", "/v1/passengers:refreshSession", token)

    assert renewed.status == 200
    assert renewed.json["passenger"]["name"] == person.name
    headers = {**town.app, **harness.bearer(renewed.json)}
    assert town.as_(headers, "GET", f"/v1/{person.name}").status == 200
    assert (again.status, again.json["details"][0]["reason"]) == (401, "REFRESH_TOKEN_INVALID")


def test_signing_out_over_rest_ends_the_session(town):
    person = sign_up(town.gateway, town.app, "passenger", displayName="Di")
    token = {"refreshToken": person.session["refreshToken"]}

    signed_out = town.as_(town.app, "POST", "/v1/passengers:signOut", token)  # the token is the proof
    refused = town.as_(town.app, "POST", "/v1/passengers:refreshSession", token)

    assert (signed_out.status, signed_out.json) == (200, {})
    assert (refused.status, refused.json["details"][0]["reason"]) == (401, "REFRESH_TOKEN_INVALID")


def test_changing_a_password_over_rest_takes_the_current_one_and_ends_the_other_sessions(town):
    person = sign_up(town.gateway, town.app, "passenger", displayName="Ed")
    path = f"/v1/{person.name}:changePassword"
    change = {"currentPassword": "passenger password", "newPassword": "a brand new one"}
    wrong = {**change, "currentPassword": "not the password"}
    account = {"email": person.resource["email"], "password": "not the password"}

    wrong_sign_in = town.as_(town.app, "POST", "/v1/passengers:signIn", account)
    wrong_current = town.as_(person, "POST", path, wrong)
    assert wrong_current.status == wrong_sign_in.status == 401
    assert wrong_current.json == wrong_sign_in.json  # no oracle: the sign-in's own answer
    assert town.as_(town.app, "POST", path, change).json["details"][0]["reason"] == "SIGN_IN_REQUIRED"
    same_as_missing(town, town.b, "POST", path, f"/v1/passengers/{MISSING}:changePassword", change)

    changed = town.as_(person, "POST", path, change)

    assert changed.status == 200, changed.body
    assert changed.json["passenger"]["name"] == person.name
    old = town.as_(
        town.app, "POST", "/v1/passengers:refreshSession", {"refreshToken": person.session["refreshToken"]}
    )
    assert (old.status, old.json["details"][0]["reason"]) == (401, "REFRESH_TOKEN_INVALID")
    again = town.as_(town.app, "POST", "/v1/passengers:signIn", {**account, "password": "a brand new one"})
    assert again.status == 200, again.body


def test_failing_to_sign_in_as_someone_locks_out_the_one_who_failed_not_them(town):
    """Anyone who knows an email could lock its owner out for 15 minutes by failing 5 times."""
    from services.runtime import sessions

    person = sign_up(town.gateway, town.app, "passenger", displayName="Flo")
    account = {"email": person.resource["email"], "password": "passenger password"}
    guess = {**account, "password": "a guess of theirs"}
    attacker = "127.0.0.66"  # another address: the gateway sees the TCP peer

    for _ in range(sessions.MAX_FAILURES):
        failed = town.gateway.request("POST", "/v1/passengers:signIn", guess, town.app, source=attacker)
        assert (failed.status, failed.json["details"][0]["reason"]) == (401, "INVALID_CREDENTIALS")
    locked = town.gateway.request("POST", "/v1/passengers:signIn", account, town.app, source=attacker)
    owner = town.gateway.request("POST", "/v1/passengers:signIn", account, town.app)

    assert (locked.status, locked.json["details"][0]["reason"]) == (429, "TOO_MANY_SIGN_IN_ATTEMPTS")
    assert owner.status == 200, owner.body


def test_who_the_caller_is_cannot_be_claimed_from_outside(town):
    claimed = {**town.app, "grpc-metadata-x-mesh-user": town.a.name}

    refused = town.as_(claimed, "GET", f"/v1/{town.a.name}")

    assert refused.status == 400
    assert refused.json["details"][1]["fieldViolations"][0]["field"] == "grpc-metadata-x-mesh-user"
