"""A served call's context as far as its peer goes, for tests of who is calling."""

from __future__ import annotations


class Peer:
    """What grpc says of a caller: the subject alternative names of its verified certificate.

    `Peer(spiffe)` is a certificate our CA would issue (that SPIFFE id, a DNS
    name, localhost, 127.0.0.1); `Peer(None)` a plaintext caller; `sans`
    gives the names outright, `common_name` makes a certificate without any.
    `reads` counts how often the peer was asked.
    """

    def __init__(
        self, spiffe: str | bytes | None, sans: list[bytes] | None = None, common_name: bytes | None = None
    ) -> None:
        uri = spiffe.encode() if isinstance(spiffe, str) else spiffe
        issued = [uri, b"x.rideshare.local", b"localhost", b"127.0.0.1"] if uri else None
        self.sans = sans if sans is not None else issued
        self.common_name = common_name
        """Of a certificate without SANs: grpc then names the peer by it."""
        self.reads = 0

    def peer_identities(self) -> list[bytes] | None:
        self.reads += 1
        return self.sans or ([self.common_name] if self.common_name else None)

    def peer_identity_key(self) -> str | None:
        if self.sans:
            return "x509_subject_alternative_name"
        return "x509_common_name" if self.common_name else None
