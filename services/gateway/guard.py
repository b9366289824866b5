"""Who may call: an API key (`x-api-key` header or `?key=`) and a token bucket per key.

A missing or unknown key is 401; a key past its rate is 429 with
`Retry-After` (whole seconds until a token is back). Each key's bucket holds
`burst` tokens and refills at `requests_per_second`, from `[gateway.rate_limit]`
unless the key was created with its own. Buckets live in this process: with
several gateway replicas each enforces its own share.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

import grpc

from services.runtime.config import RateLimitConfig

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

    def __init__(self, store: KeyStore, limit: RateLimitConfig) -> None:
        self.store = store
        self.limit = limit
        self.buckets = TokenBuckets()

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
                headers=[(b"retry-after", str(seconds).encode())],
            )
        return Admission(record.labels, owners=(f"API key {record.name!r}",))

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


def _unauthenticated(reason: str, message: str) -> HttpError:
    return HttpError(401, grpc.StatusCode.UNAUTHENTICATED, message, reason=reason)
