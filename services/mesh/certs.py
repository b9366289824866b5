"""The mesh's identities: a local certificate authority and one certificate per member.

`mesh certs` (and `mesh up` when `[tls] enabled = true` and something is
missing) writes, under `tls.dir` (default `<data_dir>/certs`):

    ca.pem, ca.key              the authority: EC P-256, valid 10 years, may only sign certificates
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

The rest of the runtime asks this module for credentials: `server_credentials`
(every port then demands a client certificate from the CA),
`channel_credentials` / `aio_channel` (a client presents its own identity and
checks the server's); each returns plaintext answers (None / an insecure
channel) while TLS is off. `peer_spiffe_id` names the caller of a served call.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import TOOL_IDENTITIES, MeshConfig
from .errors import ConfigError

CA_NAME = "ca"
CA_VALIDITY = dt.timedelta(days=3650)
CERT_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
"""A certificate with less left than this is renewed by the next `mesh certs` / `mesh up`."""
_BACKDATE = dt.timedelta(minutes=5)
"""Certificates start a little in the past, so a clock a bit behind does not reject them."""
_LOCAL_NAMES: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
)


@dataclass(frozen=True)
class Outcome:
    """What `ensure` did about one certificate."""

    name: str
    action: str
    """created | kept | renewed | reissued | rotated"""
    why: str
    identity: str
    expires: dt.datetime


@dataclass(frozen=True)
class Identity:
    """A member's certificate, key and the CA, as PEM bytes: what gRPC credentials are made of."""

    name: str
    ca: bytes
    cert: bytes
    key: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve as this identity and admit only clients with a certificate from the CA."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Call as this identity, trusting only servers with a certificate from the CA."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


# -- names ---------------------------------------------------------------------------------------------


def directory(config: MeshConfig) -> Path:
    """Where the mesh's certificates live: `tls.dir`, else `<data_dir>/certs`."""
    return config.tls.dir if config.tls.dir is not None else config.data_dir / "certs"


def spiffe_id(config: MeshConfig, name: str) -> str:
    return f"spiffe://{config.tls.trust_domain}/service/{name}"


def server_name(config: MeshConfig, name: str) -> str:
    """The DNS name in `name`'s certificate that clients check, whatever address they dialled."""
    return f"{name}.{config.tls.trust_domain}"


def identities(config: MeshConfig) -> list[str]:
    """Every member that needs a certificate: the services, the gateway and the `mesh` tool."""
    return [*config.services, *(n for n in TOOL_IDENTITIES if n not in config.services)]


def _host_of(config: MeshConfig, name: str) -> str | None:
    if name in config.services:
        return config.services[name].host
    if name == "gateway":
        return config.gateway.host
    return None


def subject_names(config: MeshConfig, name: str) -> list[x509.GeneralName]:
    """The SANs of `name`'s certificate; exactly one URI, as SPIFFE requires."""
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(spiffe_id(config, name)),
        x509.DNSName(server_name(config, name)),
        *_LOCAL_NAMES,
    ]
    host = _host_of(config, name)
    if host is not None:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            extra: x509.GeneralName = x509.DNSName(host)
        else:
            extra = x509.IPAddress(address)
            if address.is_unspecified:  # 0.0.0.0 is where one listens, never whom one reaches
                return names
        if extra not in names:
            names.append(extra)
    return names


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


# -- reading and checking ---------------------------------------------------------------------------------


def _paths(root: Path, name: str) -> tuple[Path, Path]:
    return root / f"{name}.pem", root / f"{name}.key"


def _read_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _same_key(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    return key.public_key() == cert.public_key()


def _problem(
    config: MeshConfig,
    name: str,
    cert: x509.Certificate | None,
    key: ec.EllipticCurvePrivateKey | None,
    ca: x509.Certificate,
    now: dt.datetime,
) -> str | None:
    """Why `name`'s certificate can't be kept as it is, or None."""
    if cert is None:
        return "missing"
    if key is None:
        return "key missing or unreadable"
    if not _same_key(key, cert):
        return "key does not match the certificate"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by this CA"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subject alternative names"
    if set(names) != set(subject_names(config, name)):
        return "its names changed (trust domain or host)"
    return None


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Replace `path` atomically; a private file is created 0600 and never exists wider."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _save(root: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    cert_path, key_path = _paths(root, name)
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
    ca_cert_path, ca_key_path = _paths(root, CA_NAME)
    ca_cert = None if force else _read_cert(ca_cert_path)
    ca_key = None if force else _read_key(ca_key_path)
    outcomes: list[Outcome] = []
    if ca_cert is None:
        action = "rotated" if force and ca_cert_path.exists() else "created"
        ca_key, ca_cert = make_ca(config, now)
        _save(root, CA_NAME, ca_key, ca_cert)
        outcomes.append(Outcome(CA_NAME, action, "", _subject(ca_cert), ca_cert.not_valid_after_utc))
    else:
        outcomes.append(Outcome(CA_NAME, "kept", "", _subject(ca_cert), ca_cert.not_valid_after_utc))
    for name in identities(config):
        cert_path, key_path = _paths(root, name)
        cert, key = _read_cert(cert_path), _read_key(key_path)
        why = "forced" if force else _problem(config, name, cert, key, ca_cert, now)
        if why is None:
            assert cert is not None
            key_path.chmod(0o600)
            outcomes.append(Outcome(name, "kept", "", spiffe_id(config, name), cert.not_valid_after_utc))
            continue
        ca_key = _signing_key(ca_cert, ca_key, ca_cert_path, ca_key_path, name, now)
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
    if ca_key is None or not _same_key(ca_key, ca_cert):
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


# -- using them ------------------------------------------------------------------------------------------

#: The served call whose peer was read last in this task (one task per call) and its SPIFFE id.
_peer: contextvars.ContextVar[tuple[object, bytes] | None] = contextvars.ContextVar("mesh_peer", default=None)


def peer_spiffe_id(context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    """The SPIFFE id in the caller's certificate (grpc checked it at the handshake), b"" if none.

    grpc's rule, as for its `peer_spiffe_id` property: the certificate's one URI
    name, if it has exactly one and it is a `spiffe://` URI. Read from
    `peer_identities()` (the certificate's subject alternative names) rather than
    `auth_context()`, which copies every property of the peer, its PEM
    certificate included, on each read: 0.3 against 3.3 us in a loop, ~13 us in
    place (docs/benchmarks.md, section 3). A DNS name, an IP address or an email
    address never holds "://", so the names that do are the URIs. Read once per
    call and remembered for that call: authorization and telemetry both need it.
    """
    seen = _peer.get()
    if seen is not None and seen[0] is context:
        return seen[1]
    spiffe = b""
    names = list(context.peer_identities() or ())  # a list already: the copy is ~0.1 us
    if names:
        uris = [name for name in names if b"://" in name]
        # The names are the SANs, or the common name of a certificate that has none: one value
        # (grpc takes the first CN). So two or more names are SANs, and only a lone name needs
        # `peer_identity_key()` asked (another ~1.6 us in place) to tell which it is.
        if (
            len(uris) == 1
            and uris[0].startswith(b"spiffe://")
            and (len(names) > 1 or context.peer_identity_key() == "x509_subject_alternative_name")
        ):
            spiffe = uris[0]
    _peer.set((context, spiffe))
    return spiffe


def load(config: MeshConfig, name: str) -> Identity:
    """`name`'s certificate, key and the CA, checked, or a ConfigError that says to run `mesh certs`."""
    root = directory(config)
    ca_path = root / f"{CA_NAME}.pem"
    cert_path, key_path = _paths(root, name)
    for path in (ca_path, cert_path, key_path):
        if not path.exists():
            raise ConfigError(str(path), "tls", "missing; run `mesh certs` to create the mesh's certificates")
    ca = _read_cert(ca_path)
    if ca is None:
        raise ConfigError(str(ca_path), "tls", "not a PEM certificate; run `mesh certs --force`")
    problem = _problem(config, name, _read_cert(cert_path), _read_key(key_path), ca, dt.datetime.now(dt.UTC))
    if problem is not None and not problem.startswith("expires"):
        raise ConfigError(str(cert_path), "tls", f"{problem}; run `mesh certs` to reissue it")
    return Identity(name, ca_path.read_bytes(), cert_path.read_bytes(), key_path.read_bytes())


def server_credentials(config: MeshConfig, name: str) -> grpc.ServerCredentials | None:
    """Credentials for `name`'s port (client certificates required), or None while TLS is off."""
    return load(config, name).server_credentials() if config.tls.enabled else None


def channel_credentials(config: MeshConfig, name: str) -> grpc.ChannelCredentials | None:
    """Credentials to call as `name` (e.g. "gateway", "mesh"), or None while TLS is off."""
    return load(config, name).channel_credentials() if config.tls.enabled else None


def channel_options(config: MeshConfig, server: str) -> list[tuple[str, Any]]:
    """Options that make a TLS channel check it reached `server` (a member name), whatever the address."""
    if not config.tls.enabled:
        return []
    return [("grpc.ssl_target_name_override", server_name(config, server))]


def aio_channel(
    config: MeshConfig,
    caller: str,
    server: str,
    target: str,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[Any] | None = None,
) -> grpc.aio.Channel:
    """A channel from `caller` to the member `server` at `target`: mTLS when the mesh has TLS on."""
    credentials = channel_credentials(config, caller)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, credentials, options=[*options, *channel_options(config, server)], interceptors=interceptors
    )
