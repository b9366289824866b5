"""The mesh with `[tls] enabled = true` and authorization rules, as a grpcurl user meets it.

One mesh of all six services and the REST gateway serves the module: `mesh
up` makes the certificates itself, every port demands a client certificate
from the mesh CA, services and the gateway call each other as their own
identities, and payments has the rules mesh.toml shows for money: only trips
creates payments, and refunds are for trips, the gateway and the mesh tool (and the
gateway's own calls only for operators: its calls are for callers outside the mesh).
grpcurl is the real binary with `-cacert/-cert/-key`, exactly as the README
shows it.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.mesh import stats
from services.runtime.config import load_config
from services.runtime.identity import https_context

from .conftest import FREE_PORT, Grpcurl, Mesh, MeshFactory, repo_client, repo_services
from .rides import SERVICES, Rides

pytestmark = pytest.mark.e2e

PAYMENTS = SERVICES["payments"]
PASSENGERS = SERVICES["passengers"]
RULES = {
    "*": ["trips", "gateway", "mesh"],
    "CreatePayment": ["trips"],
    "RefundPayment": ["trips", "gateway", "mesh"],
}
BILLING = SERVICES["billing"]
#: A payment refused before anything reads it: its invoice need not exist.
PAYMENT = {"payment": {"invoice": "invoices/tls-e2e", "payment_method": "pm_card_visa"}}


@pytest.fixture(scope="module")
def tls_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    services = repo_services()
    services["payments"] = {**services["payments"], "authz": RULES}
    with MeshFactory(tmp_path_factory) as factory:
        mesh = factory(services, client=repo_client(), tls={"enabled": True}, gateway={"port": FREE_PORT})
        yield mesh.start()


def certs_of(mesh: Mesh) -> Path:
    return mesh.data_dir / "certs"


def as_member(mesh: Mesh, identity: str) -> Grpcurl:
    return Grpcurl.tls(certs_of(mesh), identity)


def test_mesh_up_made_the_certificates_before_starting_the_services(tls_mesh):
    root = certs_of(tls_mesh)

    assert "mesh: certificates in" in tls_mesh.stdout()
    for name in ["ca", *SERVICES, "gateway", "mesh"]:
        assert (root / f"{name}.pem").exists(), name
        key = root / "ca" / "ca.key" if name == "ca" else root / f"{name}.key"
        assert key.stat().st_mode & 0o077 == 0, name


def test_mesh_status_checks_health_over_mtls(tls_mesh):
    code, members = tls_mesh.status()

    assert code == 0
    assert {m["service"]: m["health"] for m in members} == dict.fromkeys([*SERVICES, "gateway"], "SERVING")


def test_mesh_stats_reads_every_admin_port_as_the_mesh_identity(tls_mesh):
    code, out, err = tls_mesh.mesh("stats", "--json", "--window", "0")

    assert code == 0, err
    services = {s["service"]: s for s in json.loads(out)["services"]}
    assert set(services) == {*SERVICES, "gateway"}
    assert all(s["instances_up"] == s["instances"] == 1 for s in services.values())


#: How a client the admin port refuses sees it: a failed handshake, or the connection closed.
REFUSED = (urllib.error.URLError, ssl.SSLError, ConnectionError)


def test_an_admin_port_refuses_a_scraper_without_a_mesh_certificate(tls_mesh):
    config = load_config(tls_mesh.config, env=tls_mesh.env)
    [target] = [t for t in stats.targets(config) if t.service == "passengers"]
    trusting_the_ca = ssl.create_default_context(cafile=certs_of(tls_mesh) / "ca.pem")

    assert target.url.startswith("https://")
    with pytest.raises(REFUSED):  # no client certificate: refused at the handshake
        urllib.request.urlopen(target.url, timeout=10, context=trusting_the_ca)
    with pytest.raises(REFUSED):  # plain HTTP: not even TLS
        urllib.request.urlopen(target.url.replace("https:", "http:"), timeout=10)
    with urllib.request.urlopen(
        target.url, timeout=10, context=https_context(config, "mesh", server=False)
    ) as answer:
        assert b"mesh_server_calls_total" in answer.read()


def test_the_gateway_reaches_every_service_as_its_own_identity(tls_mesh):
    address = f"127.0.0.1:{tls_mesh.document['gateway']['port']}"

    with urllib.request.urlopen(f"http://{address}/healthz", timeout=10) as response:
        body = json.load(response)

    assert body["upstreams"] == dict.fromkeys(SERVICES, "SERVING")


def test_grpcurl_with_the_mesh_certificate_lists_and_calls(tls_mesh):
    grpcurl = as_member(tls_mesh, "mesh")

    code, out, err = grpcurl(tls_mesh.address("passengers"), "list")
    assert code == 0, err
    assert PASSENGERS in out.split()

    draft = {"display_name": "Ada Lovelace", "email": "ada-tls@example.com"}
    created = grpcurl.json(
        tls_mesh.address("passengers"), f"{PASSENGERS}/CreatePassenger", {"passenger": draft}
    )
    assert created["name"].startswith("passengers/")


def test_grpcurl_reaches_a_member_by_localhost_too(tls_mesh):
    code, out, err = as_member(tls_mesh, "mesh")(f"localhost:{tls_mesh.port('payments')}", "list")

    assert code == 0, err
    assert PAYMENTS in out.split()


#: grpcurl redials a server that closes the connection (or refuses its handshake) until its
#: connect timeout, 10 s by default; a refused client is refused within the first attempt.
REFUSED_WITHIN = ("-connect-timeout", "2")


def test_a_plaintext_client_cannot_connect(tls_mesh, grpcurl):
    code, out, _ = grpcurl(tls_mesh.address("passengers"), "list", flags=REFUSED_WITHIN)

    assert code != 0
    assert out == ""


def test_a_client_without_a_certificate_cannot_connect(tls_mesh):
    grpcurl = Grpcurl(transport=("-cacert", str(certs_of(tls_mesh) / "ca.pem")))

    code, out, _ = grpcurl(tls_mesh.address("passengers"), "list", flags=REFUSED_WITHIN)

    assert code != 0
    assert out == ""


def test_a_client_with_a_certificate_from_another_ca_cannot_connect(tls_mesh, tmp_path):
    made = tls_mesh.mesh("certs", "--dir", str(tmp_path / "other"))
    assert made.code == 0, made.err
    # It trusts the mesh's CA (so it accepts the server) but presents a certificate of the other CA.
    grpcurl = Grpcurl.tls(tmp_path / "other", "mesh", ca=certs_of(tls_mesh) / "ca.pem")

    code, out, _ = grpcurl(tls_mesh.address("passengers"), "list", flags=REFUSED_WITHIN)

    assert code != 0
    assert out == ""


def test_an_allowed_caller_may_create_a_payment_of_the_amount_payments_reads_from_billing(tls_mesh):
    place = {"latitude": 52.5219, "longitude": 13.4132}
    draft = {"trip": "trips/tls-e2e", "passenger": "passengers/tls-e2e", "pickup": place, "dropoff": place}
    invoice = as_member(tls_mesh, "mesh").json(
        tls_mesh.address("billing"), f"{BILLING}/CreateInvoice", {"invoice": draft}
    )

    payment = as_member(tls_mesh, "trips").json(
        tls_mesh.address("payments"),
        f"{PAYMENTS}/CreatePayment",
        {"payment": {"invoice": invoice["name"], "payment_method": "pm_card_visa"}},
    )

    assert payment["name"].startswith("payments/")
    assert payment["state"] == "PAYMENT_STATE_SUCCEEDED"
    assert payment["amount"] == invoice["amount"]

    refunded = as_member(tls_mesh, "mesh").json(
        tls_mesh.address("payments"), f"{PAYMENTS}/RefundPayment", {"name": payment["name"]}
    )
    assert refunded["state"] == "PAYMENT_STATE_REFUNDED"


@pytest.mark.parametrize("caller", ["passengers", "billing", "notifications"])
def test_a_refund_by_a_caller_other_than_trips_gateway_or_mesh_is_refused(tls_mesh, caller):
    status = as_member(tls_mesh, caller).error(
        tls_mesh.address("payments"), f"{PAYMENTS}/RefundPayment", {"name": "payments/tls-e2e"}
    )

    assert status.code == "PERMISSION_DENIED"
    assert status.metadata == {"caller": caller, "method": f"{PAYMENTS}/RefundPayment"}


def test_the_gateways_identity_alone_is_no_operator(tls_mesh):
    """The rules allow the gateway to refund, but its calls are for someone outside the mesh, and
    RefundPayment is ADMIN: a call from it without an admin's scope is refused."""
    status = as_member(tls_mesh, "gateway").error(
        tls_mesh.address("payments"), f"{PAYMENTS}/RefundPayment", {"name": "payments/tls-e2e"}
    )

    assert (status.code, status.reason) == ("PERMISSION_DENIED", "METHOD_RESTRICTED")


@pytest.mark.parametrize("caller", ["mesh", "passengers", "gateway"])
def test_a_caller_not_allowed_gets_permission_denied_naming_caller_and_method(tls_mesh, caller):
    status = as_member(tls_mesh, caller).error(
        tls_mesh.address("payments"), f"{PAYMENTS}/CreatePayment", PAYMENT
    )

    assert status.code == "PERMISSION_DENIED"
    assert status.message == f"{caller} may not call {PAYMENTS}/CreatePayment"
    assert status.reason == "CALLER_NOT_ALLOWED"
    assert status.domain == "payments.rideshare"
    assert status.metadata == {"caller": caller, "method": f"{PAYMENTS}/CreatePayment"}


def test_the_star_rule_covers_the_other_methods_and_denies_everyone_else(tls_mesh):
    address = tls_mesh.address("payments")

    listed = as_member(tls_mesh, "mesh").json(address, f"{PAYMENTS}/ListPayments", {"page_size": 1})
    denied = as_member(tls_mesh, "passengers").error(address, f"{PAYMENTS}/ListPayments", {"page_size": 1})

    assert isinstance(listed, dict)
    assert denied.code == "PERMISSION_DENIED"
    assert denied.metadata["caller"] == "passengers"


def test_health_and_reflection_answer_a_caller_the_rules_deny(tls_mesh):
    grpcurl = as_member(tls_mesh, "passengers")
    address = tls_mesh.address("payments")

    health = grpcurl.json(address, "grpc.health.v1.Health/Check", {"service": PAYMENTS})
    code, out, err = grpcurl(address, "describe", PAYMENTS)

    assert health == {"status": "SERVING"}
    assert code == 0, err
    assert "rpc CreatePayment" in out


def test_a_trip_crosses_the_mesh_over_mtls_and_trips_may_charge_the_card(tls_mesh):
    ride = Rides(tls_mesh, as_member(tls_mesh, "mesh")).ride("pm_card_visa")

    assert ride.completed["state"] == "TRIP_STATE_COMPLETED"
    assert ride.completed["paymentState"] == "TRIP_PAYMENT_STATE_SUCCEEDED"
    payments = as_member(tls_mesh, "mesh").json(
        tls_mesh.address("payments"), f"{PAYMENTS}/ListPayments", {"invoice": ride.completed["invoice"]}
    )
    assert [p["state"] for p in payments["payments"]] == ["PAYMENT_STATE_SUCCEEDED"]


# -- mistakes -----------------------------------------------------------------------------------------------


def test_rules_without_tls_stop_mesh_up_with_one_clear_line(mesh_factory: MeshFactory):
    mesh = mesh_factory({"passengers": {}, "payments": {"authz": {"*": ["passengers"]}}})

    code, out, err = mesh.mesh("up")

    assert code == 2
    assert "services.payments.authz: authorization rules need tls" in err
    assert "set [tls] enabled = true" in err
    assert out == ""


def test_a_rule_for_a_method_the_service_lacks_stops_it_at_start(mesh_factory: MeshFactory):
    mesh = mesh_factory(
        {"passengers": {}, "payments": {"authz": {"CreatePaymnt": ["passengers"]}}}, tls={"enabled": True}
    )

    code, out, err = mesh.mesh("up")

    assert code == 1
    assert "payments exited with code 2 before it was serving" in err
    assert "services.payments.authz.CreatePaymnt: no such method in payments's contracts" in out
    assert "did you mean 'CreatePayment'?" in out
