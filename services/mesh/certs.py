"""The mesh's identities: a local certificate authority and one certificate per member.

`mesh certs` (and `mesh up` when `[tls] enabled = true` and something is
missing) writes, under `tls.dir` (default `<data_dir>/certs`):

    ca.pem, ca/ca.key           the authority: EC P-256, valid 10 years, may only sign certificates;
                                its key alone in ca/ (0700), which no service reads
    <name>.pem, <name>.key      one per service of mesh.toml, plus `gateway` and `mesh` (the CLI's own)

A member's certificate names it three ways: the SPIFFE id
`spiffe://<trust_domain>/service/<name>` (the URI SAN servers authorize
callers by, authz.py), the DNS name `<name>.<trust_domain>` (what a client
checks the server it reached presents, whatever address it dialled: a replica
list or a DNS name can't be checked against the certificate, a fixed name
can), and `localhost` / `127.0.0.1` / the member's host (for grpcurl).

Running it again keeps what is still good (signed by the CA, matching key,
same names, more than 30 days left) and issues what is missing or stale, so a
service added to mesh.toml gets its certificate on the next run. `--force`
makes a new CA and reissues everything. Keys are written 0600.

The services read them with services/runtime/identity.py; this module, an
operator tool, is the only one that holds the CA's key.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.runtime.config import MeshConfig
from services.runtime.errors import ConfigError
from services.runtime.identity import (
    CA_NAME,
    directory,
    identities,
    paths,
    problem,
    read_cert,
    read_key,
    same_key,
    spiffe_id,
    subject_names,
)

CA_VALIDITY = dt.timedelta(days=3650)
CERT_VALIDITY = dt.timedelta(days=365)
_BACKDATE = dt.timedelta(minutes=5)
"""Certificates start a little in the past, so a clock a bit behind does not reject them."""


@dataclass(frozen=True)
class Outcome:
    """What `ensure` did about one certificate."""

    name: str
    action: str
    """created | kept | renewed | reissued | rotated"""
    why: str
    identity: str
    expires: dt.datetime


# -- making certificates ---------------------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _usage(*, sign_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not sign_certs,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certs,
        crl_sign=sign_certs,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(config: MeshConfig, now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rideshare mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"rideshare mesh CA ({config.tls.trust_domain})"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(sign_certs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_cert(
    config: MeshConfig,
    name: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: dt.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate for `name`, good as a server and as a client, signed by the CA."""
    key = _new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + CERT_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(sign_certs=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(subject_names(config, name)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Replace `path` atomically; a private file is created 0600 and never exists wider."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def ca_key_path(root: Path) -> Path:
    """The CA's private key, in a directory of its own (0700) beside the members' files.

    No service reads it (they read `ca.pem`, their own certificate and key), and
    keeping it apart lets a deployment give each member only its own files (a
    Kubernetes Secret per member) while the CA key stays with the operator.
    """
    return root / CA_NAME / f"{CA_NAME}.key"


def _save(
    root: Path,
    name: str,
    key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    key_path: Path | None = None,
) -> None:
    cert_path, member_key_path = paths(root, name)
    key_path = key_path or member_key_path
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(key_path, pem_key, private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)


def ensure(
    config: MeshConfig,
    root: Path | None = None,
    force: bool = False,
    now: dt.datetime | None = None,
) -> list[Outcome]:
    """Make the CA and every member's certificate exist and be good; keep what already is.

    An existing CA is never replaced without `force` (every certificate would
    change); if it cannot sign (key gone, expired) this fails, naming the fix.
    """
    root = directory(config) if root is None else root
    now = now or dt.datetime.now(dt.UTC)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert_path, legacy_key_path = paths(root, CA_NAME)
    ca_key_file = ca_key_path(root)
    ca_key_file.parent.mkdir(mode=0o700, exist_ok=True)
    ca_key_file.parent.chmod(0o700)
    if legacy_key_path.exists():  # written beside the members' keys before 2026-12
        os.replace(legacy_key_path, ca_key_file)
    ca_cert = None if force else read_cert(ca_cert_path)
    ca_key = None if force else read_key(ca_key_file)
    outcomes: list[Outcome] = []
    if ca_cert is None:
        action = "rotated" if force and ca_cert_path.exists() else "created"
        ca_key, ca_cert = make_ca(config, now)
        _save(root, CA_NAME, ca_key, ca_cert, ca_key_file)
        outcomes.append(Outcome(CA_NAME, action, "", _subject(ca_cert), ca_cert.not_valid_after_utc))
    else:
        outcomes.append(Outcome(CA_NAME, "kept", "", _subject(ca_cert), ca_cert.not_valid_after_utc))
    for name in identities(config):
        cert_path, key_path = paths(root, name)
        cert, key = read_cert(cert_path), read_key(key_path)
        why = "forced" if force else problem(config, name, cert, key, ca_cert, now)
        if why is None:
            assert cert is not None
            key_path.chmod(0o600)
            outcomes.append(Outcome(name, "kept", "", spiffe_id(config, name), cert.not_valid_after_utc))
            continue
        ca_key = _signing_key(ca_cert, ca_key, ca_cert_path, ca_key_file, name, now)
        if cert is None:
            action = "created"
        elif force:
            action = "rotated"
        else:
            action = "renewed" if why.startswith("expires") else "reissued"
        key, cert = make_cert(config, name, ca_key, ca_cert, now)
        _save(root, name, key, cert)
        outcomes.append(
            Outcome(
                name,
                action,
                "" if action in ("created", "rotated") else why,
                spiffe_id(config, name),
                cert.not_valid_after_utc,
            )
        )
    return outcomes


def _signing_key(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey | None,
    cert_path: Path,
    key_path: Path,
    name: str,
    now: dt.datetime,
) -> ec.EllipticCurvePrivateKey:
    fix = "`mesh certs --force` makes a new CA and reissues every certificate"
    if ca_key is None or not same_key(ca_key, ca_cert):
        raise ConfigError(str(key_path), "tls", f"cannot issue {name}'s certificate: no CA key here; {fix}")
    if ca_cert.not_valid_after_utc <= now:
        raise ConfigError(
            str(cert_path), "tls", f"the CA expired {ca_cert.not_valid_after_utc:%Y-%m-%d}; {fix}"
        )
    return ca_key


def _subject(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def report(root: Path, outcomes: Sequence[Outcome]) -> str:
    """The table `mesh certs` prints."""
    rows = [("NAME", "ACTION", "IDENTITY", "EXPIRES")]
    rows += [
        (o.name, o.action + (f" ({o.why})" if o.why else ""), o.identity, f"{o.expires:%Y-%m-%d}")
        for o in outcomes
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return f"certificates in {root}\n" + "\n".join(lines)
