"""Who may call: an API key (`x-api-key` header or `?key=`) with a token bucket, and the user it acts for.

A missing or unknown key is 401; a key past its rate is 429 with
`Retry-After` (whole seconds until a token is back). Each key's bucket holds
`burst` tokens and refills at `requests_per_second`, from `[gateway.rate_limit]`
unless the key was created with its own. Buckets live in this process: with
several gateway replicas each enforces its own share.

A signed-in passenger or driver is `Authorization: Bearer <access token>`
(services/runtime/tokens.py: EdDSA only, `exp` and `aud` checked). A token
that does not verify is 401, reason TOKEN_EXPIRED or TOKEN_INVALID; acting
for a user needs a key with the `rides` scope, else 403 RIDES_SCOPE_REQUIRED.
The admission says who the request is for in the `x-mesh-*` metadata the
services believe from the gateway alone (services/runtime/principal.py); the
token itself goes no further.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

import grpc

from services.runtime import principal
from services.runtime.config import RateLimitConfig
from services.runtime.tokens import TokenError, Verifier

from .app import Admission, Headers
from .errors import HttpError
from .keys import ApiKey, KeyStore


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """One bucket per key name."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    def take(self, name: str, rate: float, burst: int, now: float | None = None) -> float:
        """0 when a token was taken, else the seconds until one is back."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(float(burst), now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate


class KeyGuard:
    """The `Guard` of the app: admits requests with a known key within its rate."""

    def __init__(self, store: KeyStore, limit: RateLimitConfig, verifier: Verifier | None = None) -> None:
        self.store = store
        self.limit = limit
        self.buckets = TokenBuckets()
        self.verifier = verifier
        """Checks bearer tokens; None: every bearer token is refused."""

    def admit(self, request_headers: Headers, query: str) -> Admission:
        key = _presented_key(request_headers, query)
        if not key:
            raise _unauthenticated(
                "API_KEY_MISSING", "an API key is required: send the x-api-key header or ?key="
            )
        record = self.store.find(key)
        if record is None:
            raise _unauthenticated("API_KEY_INVALID", "the API key is not valid (unknown or revoked)")
        rate, burst = self.rate_of(record)
        wait = self.buckets.take(record.name, rate, burst)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise HttpError(
                429,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {rate:g} requests/s (burst {burst}) exceeded; retry in {seconds}s",
                reason="RATE_LIMITED",
                retry_after=seconds,
            )
        claims = [
            (principal.APP, quote(record.name, safe="")),
            (principal.SCOPES, ",".join(sorted(record.scopes))),
        ]
        owners = [f"API key {record.name!r}"]
        bearer = _bearer(request_headers)
        if bearer is not None:
            user = self.user_of(bearer, record)
            claims.append((principal.USER, user))
            owners.append(user)  # a user's streams have a cap of their own, whatever key carries them
        return Admission(record.labels, owners=tuple(owners), claims=tuple(claims))

    def user_of(self, token: str, record: ApiKey) -> str:
        """The passenger or driver a bearer token names, if the key may act for users."""
        if "rides" not in record.scopes:
            raise HttpError(
                403,
                grpc.StatusCode.PERMISSION_DENIED,
                f"the API key {record.name!r} may not act for signed-in users: that needs the rides scope",
                reason="RIDES_SCOPE_REQUIRED",
            )
        if self.verifier is None:
            raise _bad_token(TokenError("TOKEN_INVALID", "this gateway accepts no access tokens"))
        try:
            return self.verifier.verify(token).subject
        except TokenError as exc:
            raise _bad_token(exc) from None

    def rate_of(self, record: ApiKey) -> tuple[float, int]:
        rate = record.requests_per_second or self.limit.requests_per_second
        burst = record.burst or self.limit.burst
        return rate, burst


def _presented_key(request_headers: Headers, query: str) -> str:
    for header, raw in request_headers:
        if header == b"x-api-key":
            return raw.decode("latin-1").strip()
    if "key=" in query:
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == "key":
                return value.strip()
    return ""


def _bearer(request_headers: Headers) -> str | None:
    """The token of `Authorization: Bearer <token>`; None without the header; 401 for another scheme."""
    for header, raw in request_headers:
        if header == b"authorization":
            scheme, _, token = raw.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _bad_token(TokenError("TOKEN_INVALID", "send Authorization: Bearer <access_token>"))
            return token.strip()
    return None


def _bad_token(error: TokenError) -> HttpError:
    """401, with the challenge RFC 6750 asks for."""
    return HttpError(
        401,
        grpc.StatusCode.UNAUTHENTICATED,
        str(error),
        reason=error.reason,
        headers=[(b"www-authenticate", b'Bearer error="invalid_token"')],
    )


def _unauthenticated(reason: str, message: str) -> HttpError:
    return HttpError(401, grpc.StatusCode.UNAUTHENTICATED, message, reason=reason)
