"""`mesh certs`: the CA and the members' certificates, what they say, and what a second run keeps."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.mesh import certs
from services.mesh.cli import main
from services.runtime import identity
from services.runtime.config import load_config
from services.runtime.errors import ConfigError

from ..conftest import write_mesh_file
from .peers import Peer

MESH = """\
data_dir = "data"
[tls]
enabled = true
[services.passengers]
port = 6001
[services.payments]
port = 6002
host = "10.1.2.3"
"""
MEMBERS = ["passengers", "payments", "gateway", "mesh"]


def config_of(tmp_path: Path, text: str = MESH, env: dict[str, str] | None = None):
    return load_config(write_mesh_file(tmp_path, text), env=env or {})


def cert(root: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((root / f"{name}.pem").read_bytes())


def verifier_store(root: Path) -> verification.Store:
    return verification.Store([cert(root, "ca")])


def sans(certificate: x509.Certificate) -> x509.SubjectAlternativeName:
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_creates_a_ca_and_a_certificate_for_every_service_the_gateway_and_the_mesh_tool(tmp_path):
    config = config_of(tmp_path)

    outcomes = certs.ensure(config)

    root = tmp_path / "data" / "certs"
    assert identity.directory(config) == root
    assert [(o.name, o.action) for o in outcomes] == [("ca", "created")] + [(m, "created") for m in MEMBERS]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == sorted(
        ["ca.pem", "ca/ca.key", *(f"{n}.{ext}" for n in MEMBERS for ext in ("pem", "key"))]
    )


def test_every_certificate_chains_to_the_ca_as_server_and_as_client(tmp_path):
    config = config_of(tmp_path)
    certs.ensure(config)
    root = identity.directory(config)
    builder = verification.PolicyBuilder().store(verifier_store(root))

    for name in MEMBERS:
        leaf = cert(root, name)
        leaf.verify_directly_issued_by(cert(root, "ca"))
        server = builder.build_server_verifier(x509.DNSName(f"{name}.rideshare.local"))
        assert server.verify(leaf, []) is not None
        client = builder.build_client_verifier().verify(leaf, [])
        assert x509.UniformResourceIdentifier(f"spiffe://rideshare.local/service/{name}") in client.subjects


def test_a_certificate_names_its_spiffe_id_its_server_name_and_local_addresses(tmp_path):
    config = config_of(tmp_path)
    certs.ensure(config)
    names = sans(cert(identity.directory(config), "payments"))

    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://rideshare.local/service/payments"
    ]
    assert set(names.get_values_for_type(x509.DNSName)) == {"payments.rideshare.local", "localhost"}
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.1.2.3"),  # the service's host
    }


def test_a_host_name_becomes_a_dns_name_and_a_wildcard_address_is_left_out(tmp_path):
    config = config_of(
        tmp_path,
        'host = "0.0.0.0"\n[tls]\nenabled = true\n[services.passengers]\nport = 6001\n'
        '[services.payments]\nport = 6002\nhost = "payments.internal"\n',
    )
    certs.ensure(config)
    root = identity.directory(config)

    assert "payments.internal" in sans(cert(root, "payments")).get_values_for_type(x509.DNSName)
    assert sans(cert(root, "passengers")).get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1")
    ]


def test_the_ca_may_sign_certificates_and_the_members_may_not(tmp_path):
    config = config_of(tmp_path)
    certs.ensure(config)
    root = identity.directory(config)
    ca, leaf = cert(root, "ca"), cert(root, "passengers")

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > dt.timedelta(days=3000)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc < dt.timedelta(days=400)


def test_private_keys_are_readable_by_the_owner_only(tmp_path):
    config = config_of(tmp_path)
    certs.ensure(config)

    for key in identity.directory(config).glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_a_second_run_keeps_every_certificate_as_it_is(tmp_path):
    config = config_of(tmp_path)
    certs.ensure(config)
    before = snapshot(identity.directory(config))

    outcomes = certs.ensure(config)

    assert {o.action for o in outcomes} == {"kept"}
    assert snapshot(identity.directory(config)) == before


def test_a_service_added_later_gets_its_certificate_and_the_rest_are_kept(tmp_path):
    certs.ensure(config_of(tmp_path))
    before = snapshot(identity.directory(config_of(tmp_path)))
    config = config_of(tmp_path, MESH + "[services.trips]\nport = 6003\n")

    outcomes = {o.name: o.action for o in certs.ensure(config)}

    assert outcomes == {"ca": "kept", **dict.fromkeys(MEMBERS, "kept"), "trips": "created"}
    after = snapshot(identity.directory(config))
    assert {k: v for k, v in after.items() if not k.startswith("trips.")} == before
    cert(identity.directory(config), "trips").verify_directly_issued_by(
        cert(identity.directory(config), "ca")
    )


def test_force_makes_a_new_ca_and_reissues_everything(tmp_path):
    config = config_of(tmp_path)
    certs.ensure(config)
    root = identity.directory(config)
    old_ca, old_leaf = cert(root, "ca"), cert(root, "payments")

    outcomes = certs.ensure(config, force=True)

    assert {o.action for o in outcomes} == {"rotated"}
    new_ca, new_leaf = cert(root, "ca"), cert(root, "payments")
    assert new_ca.public_key() != old_ca.public_key()
    assert new_leaf.public_key() != old_leaf.public_key()
    new_leaf.verify_directly_issued_by(new_ca)
    with pytest.raises(Exception):  # noqa: B017, PT011 - cryptography raises InvalidSignature or ValueError
        old_leaf.verify_directly_issued_by(new_ca)


def test_a_certificate_close_to_expiry_is_renewed(tmp_path):
    config = config_of(tmp_path)
    certs.ensure(config)
    later = dt.datetime.now(dt.UTC) + certs.CERT_VALIDITY - dt.timedelta(days=10)

    outcomes = {o.name: o for o in certs.ensure(config, now=later)}

    assert outcomes["ca"].action == "kept"
    assert outcomes["payments"].action == "renewed"
    assert outcomes["payments"].expires > later + dt.timedelta(days=300)


def test_a_key_that_does_not_match_its_certificate_is_reissued(tmp_path):
    config = config_of(tmp_path)
    certs.ensure(config)
    root = identity.directory(config)
    (root / "payments.key").write_bytes((root / "passengers.key").read_bytes())

    outcomes = {o.name: o for o in certs.ensure(config)}

    assert outcomes["payments"].action == "reissued"
    assert "key does not match" in outcomes["payments"].why
    assert outcomes["passengers"].action == "kept"
    assert identity.load(config, "payments").name == "payments"


def test_a_new_trust_domain_reissues_the_certificates_under_the_same_ca(tmp_path):
    certs.ensure(config_of(tmp_path))
    config = config_of(tmp_path, MESH.replace("enabled = true", 'enabled = true\ntrust_domain = "acme.test"'))

    outcomes = {o.name: o.action for o in certs.ensure(config)}

    assert outcomes == {"ca": "kept", **dict.fromkeys(MEMBERS, "reissued")}
    names = sans(cert(identity.directory(config), "mesh")).get_values_for_type(x509.UniformResourceIdentifier)
    assert names == ["spiffe://acme.test/service/mesh"]


def test_without_the_ca_key_nothing_new_can_be_issued_and_the_error_says_what_to_do(tmp_path):
    certs.ensure(config_of(tmp_path))
    (identity.directory(config_of(tmp_path)) / "ca" / "ca.key").unlink()
    config = config_of(tmp_path, MESH + "[services.trips]\nport = 6003\n")

    with pytest.raises(ConfigError, match=r"cannot issue trips's certificate: no CA key.*mesh certs --force"):
        certs.ensure(config)


def test_an_existing_certificate_directory_elsewhere_is_used(tmp_path):
    config = config_of(tmp_path, MESH.replace("enabled = true", 'enabled = true\ndir = "pki"'))

    certs.ensure(config)

    assert identity.directory(config) == tmp_path.resolve() / "pki"
    assert (tmp_path / "pki" / "mesh.pem").exists()


# -- using them -------------------------------------------------------------------------------------------


def test_load_without_certificates_says_to_run_mesh_certs(tmp_path):
    config = config_of(tmp_path)

    with pytest.raises(ConfigError, match=r"certs/ca\.pem: tls: missing; run `mesh certs` to create"):
        identity.load(config, "passengers")


def test_load_refuses_a_certificate_from_another_ca(tmp_path):
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    ours, theirs = config_of(tmp_path / "ours"), config_of(tmp_path / "theirs")
    certs.ensure(ours)
    certs.ensure(theirs)
    for ext in ("pem", "key"):
        name = f"payments.{ext}"
        (identity.directory(ours) / name).write_bytes((identity.directory(theirs) / name).read_bytes())

    with pytest.raises(ConfigError, match="not signed by this CA; run `mesh certs`"):
        identity.load(ours, "payments")


def test_credentials_are_none_while_tls_is_off(tmp_path):
    config = config_of(tmp_path, MESH.replace("enabled = true", "enabled = false"))

    assert identity.server_credentials(config, "passengers") is None
    assert identity.channel_credentials(config, "mesh") is None
    assert identity.channel_options(config, "passengers") == []


def test_with_tls_on_clients_check_the_name_of_the_member_they_call(tmp_path):
    config = config_of(tmp_path)
    certs.ensure(config)

    assert identity.server_credentials(config, "passengers") is not None
    assert identity.channel_credentials(config, "gateway") is not None
    assert identity.channel_options(config, "payments") == [
        ("grpc.ssl_target_name_override", "payments.rideshare.local")
    ]


# -- configuration ----------------------------------------------------------------------------------------


def test_tls_is_off_by_default_and_tls_true_is_short_for_the_table(tmp_path):
    assert config_of(tmp_path, "[services.passengers]\nport = 6001\n").tls.enabled is False
    short = config_of(tmp_path, "tls = true\n[services.passengers]\nport = 6001\n")
    assert short.tls.enabled is True
    assert short.tls.trust_domain == "rideshare.local"


def test_tls_can_be_switched_on_from_the_environment(tmp_path):
    text = "[services.passengers]\nport = 6001\n"

    assert config_of(tmp_path, text, env={"MESH_TLS": "true"}).tls.enabled is True
    assert config_of(tmp_path, text, env={"MESH_TLS__ENABLED": "true"}).tls.enabled is True


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('enabled = "yes"', "tls.enabled: expected true or false"),
        ('trust_domain = "Rideshare Local"', "tls.trust_domain: expected a SPIFFE trust domain"),
        ('dirs = "x"', "tls.dirs: unknown key (did you mean 'dir'?)"),
    ],
)
def test_bad_tls_settings_name_the_key(tmp_path, table, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_of(tmp_path, f"[tls]\n{table}\n[services.passengers]\nport = 6001\n")


def test_a_service_may_not_take_the_name_of_a_tool_identity_with_tls_on(tmp_path):
    with pytest.raises(ConfigError, match=r"services\.mesh: 'mesh' is the identity of the mesh tool"):
        config_of(tmp_path, "tls = true\n[services.mesh]\nport = 6001\n")


# -- the command ------------------------------------------------------------------------------------------


def test_mesh_certs_prints_what_it_did_and_keeps_it_the_second_time(tmp_path, capsys):
    path = write_mesh_file(tmp_path, MESH)

    assert main(["certs", "--config", str(path)]) == 0
    first = capsys.readouterr().out
    assert main(["certs", "--config", str(path)]) == 0
    second = capsys.readouterr().out

    assert "ca          created" in first
    assert "spiffe://rideshare.local/service/payments" in first
    assert "created" not in second
    assert second.count("kept") == 5


def test_mesh_certs_dir_writes_elsewhere_and_says_where_the_mesh_looks(tmp_path, capsys):
    path = write_mesh_file(tmp_path, MESH)

    assert main(["certs", "--config", str(path), "--dir", str(tmp_path / "elsewhere")]) == 0

    assert (tmp_path / "elsewhere" / "ca.pem").exists()
    assert not (tmp_path / "data" / "certs").exists()
    assert "the mesh reads its certificates from" in capsys.readouterr().out


def test_mesh_certs_force_rotates(tmp_path, capsys):
    path = write_mesh_file(tmp_path, MESH)
    main(["certs", "--config", str(path)])

    assert main(["certs", "--config", str(path), "--force"]) == 0

    assert capsys.readouterr().out.count("rotated") == 5


def test_force_on_an_empty_directory_creates_rather_than_rotates(tmp_path):
    outcomes = certs.ensure(config_of(tmp_path), force=True)

    assert {o.action for o in outcomes} == {"created"}


def test_the_peer_of_a_call_is_read_once_however_often_it_is_asked():
    first, second = Peer(b"spiffe://rideshare.local/service/trips"), Peer(None)

    assert (
        identity.peer_spiffe_id(first)
        == identity.peer_spiffe_id(first)
        == b"spiffe://rideshare.local/service/trips"
    )
    assert identity.peer_spiffe_id(second) == b""
    assert (first.reads, second.reads) == (1, 1)


@pytest.mark.parametrize(
    "sans",
    [
        [b"spiffe://rideshare.local/service/trips", b"spiffe://rideshare.local/service/billing"],
        [b"spiffe://rideshare.local/service/trips", b"https://example.com/x"],
        [b"https://example.com/service/trips", b"localhost"],
        [b"trips.rideshare.local", b"localhost", b"127.0.0.1"],
    ],
    ids=["two-spiffe-uris", "spiffe-and-another-uri", "no-spiffe-uri", "no-uri"],
)
def test_a_certificate_without_exactly_one_spiffe_uri_names_nobody(sans):
    assert identity.peer_spiffe_id(Peer(None, sans=sans)) == b""


def test_a_spiffe_id_counts_only_as_a_subject_alternative_name():
    """A lone name is either the one SAN (SPIRE's URI-only SVIDs) or a common name: grpc's key tells."""
    trips = b"spiffe://rideshare.local/service/trips"

    assert identity.peer_spiffe_id(Peer(None, sans=[trips])) == trips
    assert identity.peer_spiffe_id(Peer(None, sans=[], common_name=trips)) == b""


def test_the_ca_key_lives_apart_from_what_members_read(tmp_path):
    config = config_of(tmp_path)
    root = identity.directory(config)
    certs.ensure(config)
    legacy = root / "ca.key"
    os.replace(root / "ca" / "ca.key", legacy)  # the layout before 2026-12

    certs.ensure(config)  # moves it

    assert not legacy.exists()
    assert stat.S_IMODE((root / "ca").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "ca" / "ca.key").stat().st_mode) == 0o600
    assert not [p for p in root.iterdir() if p.is_file() and p.name.startswith("ca.") and p.suffix == ".key"]
    # What a service loads: the CA's certificate, its own certificate and key; never the CA's key.
    member = identity.load(config, "payments")
    assert b"PRIVATE KEY" not in member.ca
    assert member.key == (root / "payments.key").read_bytes()
