"""How `mesh gateway --upstream` reaches its servers over TLS: grpc channel credentials.

The same credentials serve the reflection fetch at start-up and the runtime
client's channels that carry the calls, so both trust and present the same
things:

- `--upstream-ca FILE` (or `--upstream-tls` for the system's trust store):
  verify the server; `--upstream-server-name NAME` checks that name (and
  sends it as SNI) instead of the host of the address;
- `--upstream-cert FILE --upstream-key FILE`: present a client certificate;
- with none of these and `[tls] enabled = true` in the mesh file: the mesh's
  CA and the gateway's own identity (services/runtime/identity.py), so the bridge can front the
  mesh's services by address.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.runtime import identity as mesh_identity
from services.runtime.config import MeshConfig
from services.runtime.errors import ConfigError


@dataclass(frozen=True)
class UpstreamTls:
    """What to trust and present; `ca` None means the system's trust store."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """For grpc.aio channels: the runtime client's and the reflection fetch."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _read(option: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(option, option, f"cannot read {path}: {exc.strerror}") from None


def settings(
    config: MeshConfig,
    *,
    tls: bool = False,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    server_name: str | None = None,
) -> UpstreamTls | None:
    """The TLS of `--upstream`s from the command line (and the mesh file); None for cleartext."""
    if (cert is None) != (key is None):
        given = "--upstream-cert" if cert is not None else "--upstream-key"
        raise ConfigError(given, given, "--upstream-cert and --upstream-key go together")
    explicit = tls or ca is not None or cert is not None
    if not explicit:
        if server_name is not None:
            raise ConfigError(
                "--upstream-server-name",
                "--upstream-server-name",
                "is for TLS: add --upstream-tls or --upstream-ca",
            )
        if not config.tls.enabled:
            return None
        identity = mesh_identity.load(config, "gateway")  # the mesh's own: its CA, the gateway's certificate
        return UpstreamTls(identity.ca, identity.cert, identity.key, server_name)
    found = UpstreamTls(
        _read("--upstream-ca", ca) if ca is not None else None,
        _read("--upstream-cert", cert) if cert is not None else None,
        _read("--upstream-key", key) if key is not None else None,
        server_name,
    )
    _check(found, ca, cert, key)
    return found


def _check(found: UpstreamTls, ca: str | None, cert: str | None, key: str | None) -> None:
    """Bad files are named now, rather than as a failed handshake on the first call."""
    if found.ca is not None:
        try:
            x509.load_pem_x509_certificates(found.ca)
        except ValueError as exc:
            raise ConfigError(
                "--upstream-ca", "--upstream-ca", f"no PEM certificate in {ca}: {exc}"
            ) from None
    if found.cert is not None and found.key is not None:
        problem = f"{cert} with {key} is not a certificate and its key"
        try:
            certificate = x509.load_pem_x509_certificate(found.cert)
            private = serialization.load_pem_private_key(found.key, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError("--upstream-cert", "--upstream-cert", f"{problem}: {exc}") from None
        public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        if private.public_key().public_bytes(*public) != certificate.public_key().public_bytes(*public):
            raise ConfigError("--upstream-cert", "--upstream-cert", f"{problem}: the key does not match")
