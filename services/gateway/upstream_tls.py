"""How `mesh gateway --upstream` reaches its servers over TLS: one set of settings, two clients.

The bridge's own HTTP/2 client (wire.py) takes an `ssl.SSLContext`; the
reflection fetch at start-up takes grpc channel credentials. Both are made
here from the same files, so they trust and present the same things:

- `--upstream-ca FILE` (or `--upstream-tls` for the system's trust store):
  verify the server; `--upstream-server-name NAME` checks that name (and
  sends it as SNI) instead of the host of the address;
- `--upstream-cert FILE --upstream-key FILE`: present a client certificate;
- with none of these and `[tls] enabled = true` in the mesh file: the mesh's
  CA and the gateway's own identity (services/runtime/identity.py), so the bridge can front the
  mesh's services by address.
"""

from __future__ import annotations

import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

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

    def context(self) -> ssl.SSLContext:
        """For wire.py: TLS 1.2 or newer, the server verified, ALPN h2 (gRPC needs it)."""
        context = ssl.create_default_context(cadata=self.ca.decode() if self.ca is not None else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["h2"])
        if self.cert is not None and self.key is not None:
            _load_chain(context, self.cert, self.key)
        return context

    def credentials(self) -> grpc.ChannelCredentials:
        """For grpc.aio channels (the reflection fetch)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """`load_cert_chain` reads files only: hand it private temporary ones."""
    with tempfile.TemporaryDirectory(prefix="gateway-tls-") as folder:
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        context.load_cert_chain(cert_path, key_path)


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
    if found.ca is not None:
        try:
            ssl.create_default_context(cadata=found.ca.decode())
        except (ssl.SSLError, ValueError) as exc:
            problem = f"no PEM certificate in {ca}: {exc}"
            raise ConfigError("--upstream-ca", "--upstream-ca", problem) from None
    if found.cert is not None and found.key is not None:
        try:
            _load_chain(ssl.create_default_context(), found.cert, found.key)
        except (ssl.SSLError, ValueError) as exc:
            problem = f"{cert} with {key} is not a certificate and its key: {exc}"
            raise ConfigError("--upstream-cert", "--upstream-cert", problem) from None
    return found
