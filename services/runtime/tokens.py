"""Access tokens: JWTs signed with the mesh's Ed25519 keys, made by issuers, checked by the gateway.

A passenger or driver who signs in gets an access token from the service that
owns their account (passengers, drivers: the issuers) and presents it to the
gateway (the verifier) as `Authorization: Bearer <token>`. PyJWT makes and
checks them; the keys are `cryptography`'s Ed25519 keys (EdDSA, RFC 8037).

Claims: `sub` the account's resource name (`passengers/...`), `iss` the issuing
service's SPIFFE id, `aud` the gateway's, `iat` and `exp`; the header's `kid`
names the key. The verifier pins the algorithm (EdDSA only, so neither `none`
nor an HMAC made with a public key passes), requires every claim, checks `aud`
and `exp`, accepts only the issuers it knows, and only a subject in the
issuer's own collection (a drivers-issued token never names a passenger).

The keys live under `[sessions] keys_dir` (default `<data_dir>/signing-keys`):

    private/<kid>.pem   PKCS#8 private keys, 0600 in a 0700 directory: for the issuers
    public/<kid>.pem    SubjectPublicKeyInfo: for the verifiers

A kid is the UTC time its key was made, to the millisecond, and four random
hex digits (`20261206T101500.250Z-ab12`), so sorting kids sorts keys by age. Issuers sign with
the newest key; verifiers accept any key whose public half is present. Each
side re-reads its directory when it changes (checked at most every
`CHECK_EVERY` seconds, and at once for an unknown kid), so a rotation needs no
restart: add a key (services/mesh/signing.py, `mesh signing-keys rotate`), and
once every token the old key signed has expired, retire it.
"""

from __future__ import annotations

import calendar
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .config import MeshConfig
from .identity import spiffe_id

ALGORITHM = "EdDSA"
CHECK_EVERY = 1.0
"""Seconds between two looks at a keys directory for added or retired keys."""
MAX_TOKEN_BYTES = 4096
REMEMBERED = 10_000
"""Tokens the verifier remembers having checked (below)."""
"""A longer bearer token is refused unread."""
ISSUERS = ("passengers", "drivers")
"""The services that sign their accounts in; each names subjects of its own collection."""
KID = re.compile(r"^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{4}$")

K = TypeVar("K", ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)


def keys_dir(config: MeshConfig) -> Path:
    """Where the signing keys live: `[sessions] keys_dir`, else `<data_dir>/signing-keys`."""
    return config.sessions.keys_dir or config.data_dir / "signing-keys"


def issuer_id(config: MeshConfig, service: str) -> str:
    return spiffe_id(config, service)


def audience(config: MeshConfig) -> str:
    """Tokens are for the gateway: its SPIFFE id."""
    return spiffe_id(config, "gateway")


def new_kid(now: float, newest: str | None = None) -> str:
    """A kid for a key made at `now`, later than `newest` even if the clock is not."""
    millis = int(now * 1000)
    if newest is not None:
        millis = max(millis, round(kid_time(newest) * 1000) + 1)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(millis // 1000))
    return f"{stamp}.{millis % 1000:03d}Z-{secrets.token_hex(2)}"


def kid_time(kid: str) -> float:
    """When the key `kid` was made (Unix seconds), from its name."""
    return calendar.timegm(time.strptime(kid[:15], "%Y%m%dT%H%M%S")) + int(kid[16:19]) / 1000


class TokenError(Exception):
    """A token the verifier refuses; `reason` is TOKEN_EXPIRED or TOKEN_INVALID."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NoSigningKey(Exception):
    """The issuer found no private key to sign with."""


class _Ring(Generic[K]):
    """The keys of one directory by kid, re-read when the directory changes."""

    def __init__(self, directory: Path, private: bool) -> None:
        self.directory = directory
        self.private = private
        self.keys: dict[str, K] = {}
        self._stamp: int | None = None
        self._checked = float("-inf")

    def current(self, force: bool = False) -> dict[str, K]:
        now = time.monotonic()
        if force or now - self._checked >= CHECK_EVERY:
            self._checked = now
            try:
                stamp = self.directory.stat().st_mtime_ns
            except OSError:
                stamp = None
            if stamp != self._stamp or stamp is None:
                self.keys = self._load()
                self._stamp = stamp
        return self.keys

    def _load(self) -> dict[str, K]:
        loaded: dict[str, Any] = {}
        try:
            files = sorted(self.directory.glob("*.pem"))
        except OSError:
            return {}
        for path in files:
            kid = path.stem
            if not KID.match(kid):
                continue
            try:
                data = path.read_bytes()
                key: Any = (
                    serialization.load_pem_private_key(data, password=None)
                    if self.private
                    else serialization.load_pem_public_key(data)
                )
            except (OSError, ValueError, TypeError):
                continue  # half-written or foreign: the next look takes it
            wanted = ed25519.Ed25519PrivateKey if self.private else ed25519.Ed25519PublicKey
            if isinstance(key, wanted):
                loaded[kid] = key
        return loaded


@dataclass(frozen=True)
class Issued:
    """A signed access token and when it expires (Unix seconds)."""

    token: str
    expire_time: float


class Issuer:
    """Signs access tokens for the accounts of one service with the newest private key."""

    def __init__(self, config: MeshConfig, service: str) -> None:
        self.ring: _Ring[ed25519.Ed25519PrivateKey] = _Ring(keys_dir(config) / "private", private=True)
        self.issuer = issuer_id(config, service)
        self.audience = audience(config)
        self.lifetime = config.sessions.access_token_lifetime

    def issue(self, subject: str, now: float | None = None) -> Issued:
        keys = self.ring.current()
        if not keys:
            keys = self.ring.current(force=True)
        if not keys:
            raise NoSigningKey(
                f"no signing key in {self.ring.directory}; run `mesh signing-keys rotate` (or `mesh up`)"
            )
        kid = max(keys)
        issued_at = int(time.time() if now is None else now)
        expires = issued_at + int(self.lifetime)
        claims = {"sub": subject, "iss": self.issuer, "aud": self.audience, "iat": issued_at, "exp": expires}
        token = jwt.encode(claims, keys[kid], algorithm=ALGORITHM, headers={"kid": kid})
        return Issued(token, float(expires))


@dataclass(frozen=True)
class Claims:
    """What a verified token says."""

    subject: str
    issuer: str
    expire_time: float


class Verifier:
    """Checks access tokens against every public key present.

    A token that passed is remembered (up to `REMEMBERED` of them, until it expires
    or the keys change): a client sends the same token with every request for its
    whole lifetime, and checking one costs ~260 us of CPU, PyJWT's parsing about
    half of it and the Ed25519 signature the rest (`Verifier.verify` in a loop,
    2-core AMD EPYC VM under load 4-5, 2026-12-06), against a dictionary lookup.
    """

    def __init__(self, config: MeshConfig) -> None:
        self.ring: _Ring[ed25519.Ed25519PublicKey] = _Ring(keys_dir(config) / "public", private=False)
        self.audience = audience(config)
        self.collections = {issuer_id(config, name): name for name in ISSUERS}
        """Issuer -> the collection its subjects belong to."""
        self._passed: dict[str, Claims] = {}
        self._passed_under: dict[str, ed25519.Ed25519PublicKey] | None = None
        """The keys the remembered tokens were checked against: when they change, forget them all."""

    def verify(self, token: str, now: float | None = None) -> Claims:
        """The claims of a valid token; TokenError TOKEN_EXPIRED or TOKEN_INVALID otherwise."""
        keys = self.ring.current()
        if keys is not self._passed_under:
            self._passed.clear()
            self._passed_under = keys
        known = self._passed.get(token)
        if known is not None:
            if known.expire_time > (time.time() if now is None else now):
                return known
            del self._passed[token]
            raise _expired()
        claims = self._check(token, now)
        if len(self._passed) >= REMEMBERED:
            del self._passed[next(iter(self._passed))]  # the oldest
        self._passed[token] = claims
        return claims

    def _check(self, token: str, now: float | None) -> Claims:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("TOKEN_INVALID", "the access token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenError("TOKEN_INVALID", "the access token is not a JWT") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or header.get("alg") != ALGORITHM:
            raise TokenError("TOKEN_INVALID", "the access token was not signed by this mesh")
        key = self.ring.current().get(kid) or self.ring.current(force=True).get(kid)
        if key is None:
            raise TokenError("TOKEN_INVALID", "the access token's signing key is unknown or retired")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                options={"require": _REQUIRED, "verify_iat": False, "verify_exp": now is None},
            )
        except jwt.ExpiredSignatureError:
            raise _expired() from None
        except jwt.InvalidTokenError as exc:
            raise TokenError("TOKEN_INVALID", f"the access token is not valid: {exc}") from None
        if now is not None and not (isinstance(claims["exp"], int | float) and claims["exp"] > now):
            raise _expired()
        subject, issuer = claims["sub"], claims["iss"]
        collection = self.collections.get(issuer) if isinstance(issuer, str) else None
        if collection is None or not isinstance(subject, str) or not _names(subject, collection):
            raise TokenError("TOKEN_INVALID", "the access token's issuer or subject is not one of this mesh")
        return Claims(subject, issuer, float(claims["exp"]))


_REQUIRED = ["sub", "iss", "aud", "iat", "exp"]
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _expired() -> TokenError:
    return TokenError("TOKEN_EXPIRED", "the access token has expired; refresh the session")


def _names(subject: str, collection: str) -> bool:
    prefix, _, resource = subject.partition("/")
    return prefix == collection and bool(_ID.match(resource))
