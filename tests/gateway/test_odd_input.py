"""Odd input is a 4xx in the JSON error shape naming what is wrong: never a 500, never a 429.

The cases of issue 11 ("Odd input gives 500s or the wrong status"): headers
that gRPC metadata cannot carry, JSON with lone surrogates, and values so large
that an upstream quoting them in its error would go past gRPC's metadata limit.
"""

from __future__ import annotations

import pytest

from services.gateway.headers import MAX_METADATA_BYTES, MAX_VALUE_BYTES
from services.gateway.transcode import MAX_URL_VALUE

from . import harness
from .test_http import error_of

ODD_HEADERS = [
    ({"authorization": "Bearer \xe9"}, "authorization"),
    ({"traceparent": "00-\xff"}, "traceparent"),
    ({"grpc-metadata-tenant": "caf\xe9"}, "grpc-metadata-tenant"),
    ({"grpc-metadata-a!b": "1"}, "grpc-metadata-a!b"),
    ({"grpc-metadata-A_B": "1"}, None),  # names arrive lower-cased: legal
    ({"grpc-metadata-blob-bin": "not base64!"}, "grpc-metadata-blob-bin"),
    ({"x-request-id": "r" * (16 * 1024 + 1)}, "x-request-id"),
    ({"grpc-metadata-big": "v" * (MAX_VALUE_BYTES + 1)}, "grpc-metadata-big"),
    ({f"grpc-metadata-k{n}": "v" for n in range(500)}, "headers"),
]


@pytest.mark.parametrize(("headers", "field"), ODD_HEADERS, ids=[f or "legal" for _, f in ODD_HEADERS])
def test_headers_gRPC_cannot_carry_are_400_naming_the_header(kitchen_gateway, headers, field):
    response = kitchen_gateway.request("GET", "/v1/echo/e1", headers=headers)

    if field is None:
        assert response.status == 200
        return
    assert response.status == 400, response.body
    code, reason, _, fields = error_of(response)
    assert (code, reason, fields) == (3, "INVALID_REQUEST", [field])


def test_metadata_just_within_the_limits_reaches_the_upstream(kitchen_gateway):
    # Four values of the largest size, all of it under the total.
    per_header = (MAX_METADATA_BYTES - 4 * 32) // 4 - len("pN")
    headers = {f"grpc-metadata-p{n}": "v" * per_header for n in range(4)}

    response = kitchen_gateway.request("GET", "/v1/echo/e1", headers=headers)

    assert response.status == 200, response.body
    assert response.header("grpc-metadata-seen-p3") == "v" * per_header


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"\\ud800": 1}', "body"),
        (b'{"labels": {"\\udfff": "x"}}', "labels"),
        (b'{"left": "a\\ud800b"}', "left"),
        (b'{"tags": ["ok", "\\udc00"]}', "tags[1]"),
    ],
)
def test_json_with_a_lone_surrogate_is_400_naming_where(kitchen_gateway, body, field):
    response = kitchen_gateway.request("POST", "/v1/echo", body, {"content-type": "application/json"})

    assert response.status == 400, response.body
    code, reason, _, fields = error_of(response)
    assert (code, reason, fields) == (3, "INVALID_REQUEST", [field])
    assert "surrogate" in response.json["message"]


def test_escaped_characters_that_are_unicode_are_accepted(kitchen_gateway):
    body = b'{"left": "\\u00e9\\ud83d\\ude00"}'  # e-acute and a surrogate pair (an emoji)

    response = kitchen_gateway.request("POST", "/v1/echo", body, {"content-type": "application/json"})

    assert response.status == 200, response.body
    assert response.json["left"] == "\u00e9\U0001f600"


def test_a_resource_name_longer_than_a_url_value_may_be_is_400_naming_the_field(passengers_gateway):
    response = passengers_gateway.request("GET", "/v1/passengers/" + "a" * 5000)

    assert response.status == 400, response.body
    assert error_of(response)[1:] == (
        "INVALID_REQUEST",
        ["type.googleapis.com/google.rpc.ErrorInfo", "type.googleapis.com/google.rpc.BadRequest"],
        ["name"],
    )


def test_a_resource_name_as_long_as_a_url_value_may_be_reaches_the_service(passengers_gateway):
    name = "passengers/" + "a" * (MAX_URL_VALUE - len("passengers/"))

    response = passengers_gateway.request("GET", "/v1/" + name)

    assert response.status == 404, response.body  # the service's answer, not the gateway's
    assert error_of(response)[:2] == (5, "PASSENGER_NOT_FOUND")
    assert response.json["message"].startswith(name[:1000])  # quoted, up to errors.MAX_MESSAGE_BYTES


def test_a_10_kb_resource_name_is_414_not_429(passengers_gateway):
    response = passengers_gateway.request("GET", "/v1/passengers/" + "a" * 10_000)

    assert response.status == 414
    assert error_of(response)[:2] == (3, "URL_TOO_LONG")


@pytest.fixture(scope="module")
def whole_mesh(background, tmp_path_factory):
    """Every service behind the gateway, and an operator's key (who may name any passenger)."""
    with harness.whole_mesh(background, tmp_path_factory.mktemp("odd")) as gateway:
        yield gateway, {"x-api-key": gateway.new_key("operators", frozenset({"admin", "rides"}))}


@pytest.mark.parametrize("size", [1000, 4000, 10_000])
def test_a_long_resource_name_in_a_json_body_is_404_naming_the_field_not_429(whole_mesh, size):
    """The body has no URL's limit: trips quotes the passenger in its NOT_FOUND (message and
    metadata), which went past gRPC's 8 KiB of trailers from ~3 KB on: RESOURCE_EXHAUSTED, 429."""
    gateway, operator = whole_mesh
    place = {"latitude": 48.8584, "longitude": 2.2945}
    name = "passengers/" + "a" * size
    ride = {"passenger": name, "pickup": place, "dropoff": place, "paymentMethod": "pm_card_visa"}

    response = gateway.request("POST", "/v1/trips", ride, headers=operator)

    assert response.status == 404, response.body
    assert error_of(response)[:2] == (5, "PASSENGER_NOT_FOUND")
    assert response.json["details"][0]["metadata"]["passenger"].startswith("passengers/aaa")
    assert len(response.body) < 4096


def test_a_query_value_longer_than_a_url_value_may_be_is_400_naming_the_parameter(kitchen_gateway):
    response = kitchen_gateway.request("GET", "/v1/echo/e1?left=" + "a" * (MAX_URL_VALUE + 1))

    assert response.status == 400
    assert error_of(response)[3] == ["left"]
