"""Who is calling, beyond the key: bearer tokens checked at the gateway, and the metadata only it sets.

The Kitchen's Echo answers with the metadata it received (`grpc-metadata-seen-*`),
so these tests read exactly what the gateway told the upstream.
"""

from __future__ import annotations

import time

import pytest

from services.gateway.server import Options
from services.mesh import signing
from services.runtime import tokens

from . import harness

PASSENGER = "passengers/0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def secured(background, gateway_mesh, kitchen, descriptor_set):
    """The Kitchen behind a gateway that wants API keys and checks bearer tokens with the mesh's keys."""
    signing.create(gateway_mesh)
    options = Options(upstreams=[kitchen.address], descriptor_set=str(descriptor_set), auth=True)
    running = background.run(harness.start_gateway(gateway_mesh, options))
    yield running
    background.run(running.stop())


def token(config, subject=PASSENGER, issuer="passengers", now=None) -> str:
    return tokens.Issuer(config, issuer).issue(subject, now).token


def echo(gateway, key, **headers):
    return gateway.request("GET", "/v1/echo/e1", headers={"x-api-key": key, **headers})


def test_the_upstream_hears_which_application_and_scopes_call(secured):
    key = secured.new_key("café app", frozenset({"admin"}))

    answer = echo(secured, key)

    assert answer.status == 200
    assert answer.header("grpc-metadata-seen-x-mesh-app") == "caf%C3%A9%20app"  # ASCII, as metadata must be
    assert answer.header("grpc-metadata-seen-x-mesh-scopes") == "admin"
    assert answer.header("grpc-metadata-seen-x-mesh-user") is None


def test_a_rides_key_with_a_valid_token_acts_for_its_user_and_the_token_goes_no_further(
    secured, gateway_mesh
):
    key = secured.new_key("rider app", frozenset({"rides"}))

    answer = echo(secured, key, authorization=f"Bearer {token(gateway_mesh)}")

    assert answer.status == 200
    assert answer.header("grpc-metadata-seen-x-mesh-user") == PASSENGER
    assert answer.header("grpc-metadata-seen-x-mesh-scopes") == "rides"
    assert answer.header("grpc-metadata-seen-authorization") is None


def test_a_key_without_the_rides_scope_may_not_act_for_a_user(secured, gateway_mesh):
    plain = secured.new_key("plain app")
    admin = secured.new_key("operator app", frozenset({"admin"}))

    for key in (plain, admin):
        refused = echo(secured, key, authorization=f"Bearer {token(gateway_mesh)}")

        assert refused.status == 403
        assert (refused.json["code"], refused.json["details"][0]["reason"]) == (7, "RIDES_SCOPE_REQUIRED")


def test_an_expired_tampered_or_foreign_token_is_401_with_a_reason(secured, gateway_mesh):
    key = secured.new_key("checked app", frozenset({"rides"}))
    good = token(gateway_mesh)
    header, payload, signature = good.split(".")

    for authorization, reason in (
        (f"Bearer {token(gateway_mesh, now=time.time() - 3600)}", "TOKEN_EXPIRED"),
        (f"Bearer {header}.{payload}x.{signature}", "TOKEN_INVALID"),
        (f"Bearer {header}.{payload}.{signature[::-1]}", "TOKEN_INVALID"),
        (f"Bearer {token(gateway_mesh, subject=PASSENGER, issuer='drivers')}", "TOKEN_INVALID"),
        ("Bearer", "TOKEN_INVALID"),
        (f"Basic {good}", "TOKEN_INVALID"),
    ):
        refused = echo(secured, key, authorization=authorization)

        assert refused.status == 401, authorization
        assert refused.json["code"] == 16
        assert refused.json["details"][0]["reason"] == reason, authorization
        assert refused.header("www-authenticate").startswith("Bearer")


def test_x_mesh_metadata_from_a_client_is_refused(secured, kitchen_gateway):
    key = secured.new_key("sneaky app", frozenset({"rides"}))

    for gateway, headers in ((secured, {"x-api-key": key}), (kitchen_gateway, {})):
        for name in ("grpc-metadata-x-mesh-user", "Grpc-Metadata-X-Mesh-Scopes", "grpc-metadata-x-mesh-app"):
            refused = gateway.request("GET", "/v1/echo/e1", headers={**headers, name: "passengers/someone"})

            assert refused.status == 400, name
            violation = refused.json["details"][1]["fieldViolations"][0]
            assert violation["field"] == name.lower()


def test_a_rotated_key_keeps_old_tokens_valid_until_they_expire(secured, gateway_mesh):
    key = secured.new_key("rotation app", frozenset({"rides"}))
    old = token(gateway_mesh)

    signing.create(gateway_mesh)
    new = token(gateway_mesh)

    assert tokens.Verifier(gateway_mesh).verify(new).subject == PASSENGER
    for bearer in (old, new):
        assert echo(secured, key, authorization=f"Bearer {bearer}").status == 200
    assert signing.retire(gateway_mesh) == [], "the old key signed tokens that have not expired"


def test_without_keys_every_caller_is_an_operator(kitchen_gateway):
    answer = kitchen_gateway.request("GET", "/v1/echo/e1", headers={"authorization": "Bearer t"})

    assert answer.header("grpc-metadata-seen-x-mesh-scopes") == "admin"
    assert answer.header("grpc-metadata-seen-authorization") == "Bearer t", "passed on as before"
