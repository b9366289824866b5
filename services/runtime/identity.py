"""The mesh's identities at run time: who a member is, its credentials, and who is calling.

Every member of the mesh (each service, the gateway, the `mesh` tool) has a
certificate from the mesh's CA, issued by `mesh certs` (services/mesh/certs.py)
under `tls.dir` (default `<data_dir>/certs`). It names the member three ways:
the SPIFFE id `spiffe://<trust_domain>/service/<name>` (the URI SAN servers
authorize callers by, authz.py), the DNS name `<name>.<trust_domain>` (what a
client checks the server it reached presents, whatever address it dialled),
and `localhost` / `127.0.0.1` / the member's host (for grpcurl).

`https_context` is the same for HTTPS (the admin ports, telemetry.py).
`server_credentials` (every port then demands a client certificate from the
CA) and `channel_credentials` with `channel_options` (a client presents its own
identity and checks the server's) return plaintext answers (None, no options)
while TLS is off. `peer_spiffe_id` names the caller of a served call.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .config import TOOL_IDENTITIES, MeshConfig
from .errors import ConfigError

CA_NAME = "ca"
RENEW_BEFORE = dt.timedelta(days=30)
"""A certificate with less left than this is renewed by the next `mesh certs` / `mesh up`."""
_LOCAL_NAMES: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
)


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


# -- reading and checking ---------------------------------------------------------------------------------


def paths(root: Path, name: str) -> tuple[Path, Path]:
    return root / f"{name}.pem", root / f"{name}.key"


def read_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def read_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def same_key(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    return key.public_key() == cert.public_key()


def problem(
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
    if not same_key(key, cert):
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
    cert_path, key_path = paths(root, name)
    for path in (ca_path, cert_path, key_path):
        if not path.exists():
            raise ConfigError(str(path), "tls", "missing; run `mesh certs` to create the mesh's certificates")
    ca = read_cert(ca_path)
    if ca is None:
        raise ConfigError(str(ca_path), "tls", "not a PEM certificate; run `mesh certs --force`")
    found = problem(config, name, read_cert(cert_path), read_key(key_path), ca, dt.datetime.now(dt.UTC))
    if found is not None and not found.startswith("expires"):
        raise ConfigError(str(cert_path), "tls", f"{found}; run `mesh certs` to reissue it")
    return Identity(name, ca_path.read_bytes(), cert_path.read_bytes(), key_path.read_bytes())


def https_context(config: MeshConfig, name: str, server: bool) -> ssl.SSLContext:
    """HTTPS as `name`: its certificate, only the mesh CA trusted, the peer's certificate required.

    A server asks every client for a certificate from the CA (ssl.CERT_REQUIRED);
    a client checks the server's against the address it dialled, which every
    member's certificate names (localhost, 127.0.0.1, its host).
    """
    found = load(config, name)  # checked, or a ConfigError that says to run `mesh certs`
    purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
    context = ssl.create_default_context(purpose, cadata=found.ca.decode())
    context.load_cert_chain(*paths(directory(config), name))
    if server:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


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
    config: MeshConfig, caller: str, server: str, target: str, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A plain channel from `caller` to the member `server` at `target` (the tools' health probes;
    services use the client's channels): mTLS when the mesh has TLS on."""
    credentials = channel_credentials(config, caller)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, credentials, options=[*options, *channel_options(config, server)])
