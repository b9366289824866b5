"""The passenger service as a grpcurl user meets it: reflection, health, CRUD and errors.

One mesh serves the whole module; each test makes its own passengers (unique
emails), so the tests do not depend on each other's data or order.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

SERVICE = "rideshare.passengers.v1.PassengerService"


def rpc(method: str) -> str:
    return f"{SERVICE}/{method}"


def unique_email() -> str:
    return f"rider-{uuid.uuid4().hex[:12]}@example.com"


@pytest.fixture
def passenger(passengers_mesh, grpcurl) -> dict[str, Any]:
    """A freshly created passenger in the shared mesh."""
    draft = {"display_name": "Ada Lovelace", "email": unique_email(), "phone": "+447700900123"}
    created: dict[str, Any] = grpcurl.json(
        passengers_mesh.address(), rpc("CreatePassenger"), {"passenger": draft}
    )
    return created


def test_reflection_lists_the_service_health_and_reflection(passengers_mesh, grpcurl):
    code, out, err = grpcurl(passengers_mesh.address(), "list")

    assert code == 0, err
    assert set(out.split()) >= {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_describe_service_shows_every_rpc_with_its_http_binding(passengers_mesh, grpcurl):
    code, out, err = grpcurl(passengers_mesh.address(), "describe", SERVICE)

    assert code == 0, err
    for method in ("CreatePassenger", "GetPassenger", "ListPassengers", "UpdatePassenger", "DeletePassenger"):
        assert f"rpc {method} (" in out
    assert 'get:"/v1/{name=passengers/*}"' in out
    assert "returns ( .google.protobuf.Empty )" in out


def test_describe_message_shows_fields_and_their_behaviour(passengers_mesh, grpcurl):
    code, out, err = grpcurl(passengers_mesh.address(), "describe", "rideshare.passengers.v1.Passenger")

    assert code == 0, err
    assert "string name = 1 [(.google.api.field_behavior) = IDENTIFIER];" in out
    assert "string display_name = 2 [(.google.api.field_behavior) = REQUIRED];" in out
    assert "string email = 3 [(.google.api.field_behavior) = REQUIRED];" in out
    assert "string phone = 4 [(.google.api.field_behavior) = OPTIONAL];" in out
    assert ".google.protobuf.Timestamp create_time = 5 [(.google.api.field_behavior) = OUTPUT_ONLY];" in out


def test_describe_shows_the_proto_comments(passengers_mesh, grpcurl):
    code, out, _ = grpcurl(passengers_mesh.address(), "describe", SERVICE)

    assert code == 0
    assert "Manages the people who ride" in out
    assert "Registers a new passenger" in out


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_check_is_serving(passengers_mesh, grpcurl, service):
    response = grpcurl.json(passengers_mesh.address(), "grpc.health.v1.Health/Check", {"service": service})

    assert response == {"status": "SERVING"}


def test_health_check_of_an_unknown_service_is_not_found(passengers_mesh, grpcurl):
    status = grpcurl.error(
        passengers_mesh.address(), "grpc.health.v1.Health/Check", {"service": "rideshare.nope.v1.Nope"}
    )

    assert status.code == "NOT_FOUND"


def test_create_get_update_delete(passengers_mesh, grpcurl):
    address = passengers_mesh.address()
    email = unique_email()

    created = grpcurl.json(
        address,
        rpc("CreatePassenger"),
        {"passenger": {"display_name": "  Grace Hopper ", "email": email, "name": "passengers/mine"}},
    )
    assert created["name"].startswith("passengers/")
    assert created["name"] != "passengers/mine"
    assert created["displayName"] == "Grace Hopper"
    assert created["email"] == email
    assert created["createTime"] == created["updateTime"]

    assert grpcurl.json(address, rpc("GetPassenger"), {"name": created["name"]}) == created

    updated = grpcurl.json(
        address,
        rpc("UpdatePassenger"),
        {
            "passenger": {"name": created["name"], "display_name": "Admiral Hopper", "email": "ignored@x.io"},
            "update_mask": {"paths": ["display_name"]},
        },
    )
    assert updated["displayName"] == "Admiral Hopper"
    assert updated["email"] == email
    assert updated["createTime"] == created["createTime"]
    assert updated["updateTime"] > created["updateTime"]
    assert grpcurl.json(address, rpc("GetPassenger"), {"name": created["name"]}) == updated

    assert grpcurl.json(address, rpc("DeletePassenger"), {"name": created["name"]}) == {}

    code, out, err = grpcurl(address, rpc("GetPassenger"), data={"name": created["name"]})
    assert code != 0, out
    assert "Code: NotFound" in err
    assert '"reason":"PASSENGER_NOT_FOUND"' in err
    assert '"domain":"passengers.rideshare"' in err


def test_list_pages_through_every_passenger_oldest_first(passengers_mesh, grpcurl):
    address = passengers_mesh.address()
    mine = [
        grpcurl.json(
            address, rpc("CreatePassenger"), {"passenger": {"display_name": f"P{i}", "email": unique_email()}}
        )
        for i in range(5)
    ]

    seen: list[dict[str, Any]] = []
    token = ""
    for _ in range(100):
        page = grpcurl.json(address, rpc("ListPassengers"), {"page_size": 2, "page_token": token})
        assert 1 <= len(page["passengers"]) <= 2
        seen += page["passengers"]
        token = page.get("nextPageToken", "")
        if not token:
            break
    else:
        pytest.fail("ListPassengers never returned an empty next_page_token")

    names = [p["name"] for p in seen]
    assert len(names) == len(set(names)), "a passenger appeared on two pages"
    assert [p for p in seen if p["name"] in {m["name"] for m in mine}] == mine


@pytest.mark.parametrize(
    ("method", "request_body", "field"),
    [
        pytest.param(
            "CreatePassenger",
            {"passenger": {"email": "nameless@example.com"}},
            "passenger.display_name",
            id="missing-display-name",
        ),
        pytest.param(
            "CreatePassenger",
            {"passenger": {"display_name": "Bad Mail", "email": "not-an-email"}},
            "passenger.email",
            id="bad-email",
        ),
        pytest.param("GetPassenger", {"name": "x/y"}, "name", id="malformed-name"),
        pytest.param("DeletePassenger", {"name": "passengers/a/b"}, "name", id="nested-name"),
        pytest.param("ListPassengers", {"page_size": -1}, "page_size", id="negative-page-size"),
        pytest.param("ListPassengers", {"page_token": "garbage!"}, "page_token", id="garbage-page-token"),
        pytest.param(
            "UpdatePassenger",
            {"passenger": {"name": "{name}", "display_name": "X"}, "update_mask": {"paths": ["create_time"]}},
            "update_mask",
            id="unknown-update-mask-path",
        ),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(
    passengers_mesh, grpcurl, passenger, method, request_body, field
):
    if method == "UpdatePassenger":
        request_body["passenger"]["name"] = passenger["name"]

    status = grpcurl.error(passengers_mesh.address(), rpc(method), request_body)

    assert status.code == "INVALID_ARGUMENT"
    assert status.domain == "passengers.rideshare"
    assert field in status.violations, status
    assert status.message.startswith(field)


def test_a_repeated_request_id_returns_the_first_answer(passengers_mesh, grpcurl):
    request = {
        "passenger": {"display_name": "Once Only", "email": unique_email()},
        "request_id": str(uuid.uuid4()),
    }

    first = grpcurl.json(passengers_mesh.address(), rpc("CreatePassenger"), request)
    again = grpcurl.json(passengers_mesh.address(), rpc("CreatePassenger"), request)

    assert again == first


def test_a_request_id_reused_for_another_request_is_rejected(passengers_mesh, grpcurl):
    request_id = str(uuid.uuid4())
    first = {"passenger": {"display_name": "First", "email": unique_email()}, "request_id": request_id}
    other = {"passenger": {"display_name": "Other", "email": unique_email()}, "request_id": request_id}
    grpcurl.json(passengers_mesh.address(), rpc("CreatePassenger"), first)

    status = grpcurl.error(passengers_mesh.address(), rpc("CreatePassenger"), other)

    assert status.code == "INVALID_ARGUMENT"
    assert status.reason == "REQUEST_ID_REUSED"
    assert "request_id" in status.violations
