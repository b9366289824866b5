"""Signing in to the services that own accounts (passengers, drivers): passwords, sessions, throttling.

Written once for both: a service keeps its accounts in its own table, with an
`email` and a `password_hash` column, and includes the session tables in its
migrations (`\\ir ../../runtime/migrations/sessions.sql`, and its PostgreSQL
variant); `Accounts` over that table does the rest.

- **Passwords** are hashed with argon2id, argon2-cffi's default parameters
  (RFC 9106's second recommendation: 64 MiB, 3 passes, 4 lanes; ~0.1 s of CPU
  here), in a worker thread so the event loop keeps serving, at most
  `HASHING_AT_ONCE` at a time so a burst of sign-ins cannot take the memory.
  A hash made with older parameters is replaced at the next sign-in.
- **Sign-in** answers a wrong email exactly like a wrong password (the same
  error, and a hash is checked either way so the time does not tell), and
  counts failures per email and client address (`x-mesh-client`, which the
  gateway sets), whether or not an account has the email: after
  `MAX_FAILURES` within `FAILURE_WINDOW` seconds that address is refused for
  that email, and after `MAX_CLIENT_FAILURES` for any email, without checking
  anything, until the window ends. Only the address that failed is refused:
  anyone who knows an email can no longer lock its owner out (see
  docs/threat-model.md for what that trades). A success forgets the pair's.
- **Sessions**: a signed access token (tokens.py) and an opaque refresh token
  (`rt_` + 256 random bits). Only the refresh token's SHA-256 is stored (with
  that much entropy a slow hash adds nothing). Each works once: refreshing
  marks it used and hands out the next of its family (the tokens descended from
  one sign-in); a used one presented again means two clients hold it, so the
  whole family is ended and the caller must sign in again (OAuth 2.0 Security
  BCP, refresh token rotation).
- **The ways out**: signing out ends one family; changing the password (the
  current one checked like a sign-in) ends every family of the account and
  starts a new one.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import argon2
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from .aip import new_id, timestamp_from_ns
from .config import MeshConfig
from .errors import FieldViolation, InvalidArgument, ResourceExhausted, Unauthenticated, Unavailable
from .principal import caller, require_owner
from .resources import Backend, Row, Store, Tx
from .tokens import Issued, Issuer, NoSigningKey

MIN_PASSWORD = 8
MAX_PASSWORD = 256
MAX_FAILURES = 5
"""Failed sign-ins for one email from one client address, within the window, before that pair is refused."""
MAX_CLIENT_FAILURES = 30
"""Failed sign-ins from one client address for any emails, within the window, before it is refused."""
FAILURE_WINDOW = 15 * 60
"""Seconds over which failed sign-ins are counted."""
HASHING_AT_ONCE = 2
"""Password hashes computed at the same time per process (each takes 64 MiB)."""
REFRESH_PREFIX = "rt_"

_hasher = argon2.PasswordHasher()
_hashing = threading.BoundedSemaphore(HASHING_AT_ONCE)
_decoy: list[str] = []
"""A hash to check a password against when no account has the email (made on first need)."""


def password_violation(password: str, field: str) -> FieldViolation | None:
    """Why `password` cannot be a password, on `field` (never quoting it); None if it can."""
    if MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        return None
    return FieldViolation(field, f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")


async def hash_password(password: str) -> str:
    """The argon2id hash (PHC string, with its salt and parameters) to store for `password`."""
    return await asyncio.to_thread(_hash, password)


def _hash(password: str) -> str:
    with _hashing:
        return _hasher.hash(password)


async def _verify(stored: str, password: str) -> bool:
    return await asyncio.to_thread(_matches, stored, password)


def _matches(stored: str, password: str) -> bool:
    with _hashing:
        try:
            return _hasher.verify(stored, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False


@dataclass(frozen=True)
class Grant:
    """A new session of one account."""

    account: str
    """The account's resource name (`passengers/...`)."""
    access: Issued
    refresh_token: str
    refresh_expire_time: float


def wrong_credentials() -> Unauthenticated:
    return Unauthenticated("the email or password is wrong", reason="INVALID_CREDENTIALS")


def _refresh_refused(why: str) -> Unauthenticated:
    return Unauthenticated(f"the refresh token {why}; sign in again", reason="REFRESH_TOKEN_INVALID")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    """Sign-in and sessions for the accounts of one table (`id`, `email`, `password_hash` columns)."""

    def __init__(
        self, db: Backend, table: str, collection: str, issuer: Issuer, refresh_lifetime: float
    ) -> None:
        self.db = db
        self.table = table
        self.collection = collection
        self.issuer = issuer
        self.refresh_lifetime = refresh_lifetime

    @classmethod
    def of(cls, store: Store[Any], config: MeshConfig) -> Accounts:
        """The accounts kept in a resource store's table, issuing tokens for its collection."""
        return cls(
            store.db,
            store.table,
            store.collection,
            Issuer(config, store.collection),
            config.sessions.refresh_token_lifetime,
        )

    async def sign_in(self, email: str, password: str, client: str = "") -> Grant:
        """A new session for the account with this email and password; INVALID_CREDENTIALS otherwise.

        `client`: the address the attempt came from (`Principal.client`), whose failures count.
        """
        key = email.strip().lower()
        now = time.time_ns()
        await self._not_throttled(key, client, now)
        row = await self.db.query_one(
            f"SELECT id, password_hash FROM {self.table} WHERE email = ? COLLATE NOCASE", (key,)
        )
        stored = await self._check_password(key, client, row, password, now)
        assert row is not None  # a hash matched, so a row was found
        account_id: str = row["id"]
        rehashed = await hash_password(password) if _hasher.check_needs_rehash(stored) else None
        async with self.db.transaction() as tx:
            await self._forget_failures(tx, key, client)
            if rehashed is not None:
                await tx.execute(
                    f"UPDATE {self.table} SET password_hash = ? WHERE id = ?", (rehashed, account_id)
                )
            await tx.execute("DELETE FROM refresh_tokens WHERE expire_time < ?", (now,))
            return await self._grant(tx, account_id, new_id(), now)

    async def refresh(self, refresh_token: str) -> Grant:
        """The next session for a refresh token, which is used up; REFRESH_TOKEN_INVALID otherwise."""
        now = time.time_ns()
        digest = _digest(refresh_token)
        async with self.db.transaction() as tx:
            row = await tx.query_one(
                "SELECT account, family, expire_time, used_time FROM refresh_tokens WHERE hash = ?",
                (digest,),
            )
            if row is None:
                refused = _refresh_refused("is not valid")
            elif row["used_time"] is not None:
                # Two holders of one token: whoever it is, neither keeps the session.
                await tx.execute("DELETE FROM refresh_tokens WHERE family = ?", (row["family"],))
                refused = _refresh_refused("was used already, so every session of its sign-in ended")
            elif row["expire_time"] <= now:
                refused = _refresh_refused("has expired")
            elif await tx.query_one(f"SELECT 1 FROM {self.table} WHERE id = ?", (row["account"],)) is None:
                await tx.execute("DELETE FROM refresh_tokens WHERE account = ?", (row["account"],))
                refused = _refresh_refused("is not valid")
            else:
                await tx.execute("UPDATE refresh_tokens SET used_time = ? WHERE hash = ?", (now, digest))
                return await self._grant(tx, row["account"], row["family"], now)
        raise refused  # after the commit: an ended family stays ended

    async def sign_out(self, refresh_token: str) -> None:
        """End the session of a refresh token: it and every token of the same sign-in.

        An unknown, used or expired token ends nothing and is no error (RFC 7009):
        the caller wanted the session gone, and it is.
        """
        async with self.db.transaction() as tx:
            row = await tx.query_one(
                "SELECT family FROM refresh_tokens WHERE hash = ?", (_digest(refresh_token),)
            )
            if row is not None:
                await tx.execute("DELETE FROM refresh_tokens WHERE family = ?", (row["family"],))

    async def change_password(self, account_id: str, current: str, new: str, client: str = "") -> Grant:
        """Replace the password, given the current one: every session of the account ends, a new one begins.

        A wrong current password is INVALID_CREDENTIALS, exactly as at sign-in, and
        counts as a failed sign-in of the account's email: a stolen access token is
        no way around the throttle to guess the password.
        """
        bad = password_violation(new, "new_password")
        if bad is not None:
            raise InvalidArgument(bad)
        now = time.time_ns()
        row = await self.db.query_one(
            f"SELECT email, password_hash FROM {self.table} WHERE id = ?", (account_id,)
        )
        key = (row["email"] or "").strip().lower() if row is not None else ""
        await self._not_throttled(key, client, now)
        await self._check_password(key, client, row, current, now)
        hashed = await hash_password(new)
        async with self.db.transaction() as tx:
            await tx.execute(f"UPDATE {self.table} SET password_hash = ? WHERE id = ?", (hashed, account_id))
            await tx.execute("DELETE FROM refresh_tokens WHERE account = ?", (account_id,))
            await self._forget_failures(tx, key, client)
            return await self._grant(tx, account_id, new_id(), now)

    async def _check_password(self, key: str, client: str, row: Row | None, password: str, now: int) -> str:
        """The account's stored hash if `password` matches it; else INVALID_CREDENTIALS, and a failure
        counted for `key` from `client`.

        No stored hash (no such account, or one without a password) costs the same
        check against a decoy, so the time does not tell either.
        """
        stored: str | None = row["password_hash"] if row is not None and row["password_hash"] else None
        if stored is None:
            await _verify(await _decoy_hash(), password)
        elif await _verify(stored, password):
            return stored
        if key:  # an account without an email has no password either: nothing to guess
            await self._failed(key, client, now)
        raise wrong_credentials()

    async def forget(self, account_id: str) -> None:
        """End every session of an account (it was deleted)."""
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM refresh_tokens WHERE account = ?", (account_id,))

    async def _grant(self, tx: Tx, account_id: str, family: str, now: int) -> Grant:
        name = f"{self.collection}/{account_id}"
        try:
            access = self.issuer.issue(name, now / 1e9)
        except NoSigningKey as exc:
            raise Unavailable(f"cannot sign in now: {exc}", reason="NO_SIGNING_KEY") from None
        token = REFRESH_PREFIX + secrets.token_urlsafe(32)
        expires = now + int(self.refresh_lifetime * 1e9)
        await tx.execute(
            "INSERT INTO refresh_tokens (hash, account, family, create_time, expire_time)"
            " VALUES (?, ?, ?, ?, ?)",
            (_digest(token), account_id, family, now, expires),
        )
        return Grant(name, access, token, expires / 1e9)

    async def _not_throttled(self, email: str, client: str, now: int) -> None:
        """TOO_MANY_SIGN_IN_ATTEMPTS if `client` failed too often for `email`, or for any email."""
        if not email:
            return
        window_start = now - FAILURE_WINDOW * 1_000_000_000
        pair = await self.db.query_one(
            "SELECT failures, first_time FROM sign_in_failures"
            " WHERE email = ? AND client = ? AND first_time > ?",
            (email, client, window_start),
        )
        if pair is not None and pair["failures"] >= MAX_FAILURES:
            _throttled("for this email from this address", pair["first_time"], now)
        spread = await self.db.query_one(
            "SELECT COALESCE(SUM(failures), 0) AS failures, MIN(first_time) AS first_time"
            " FROM sign_in_failures WHERE client = ? AND first_time > ?",
            (client, window_start),
        )
        if spread is not None and spread["failures"] >= MAX_CLIENT_FAILURES:
            _throttled("from this address", spread["first_time"], now)

    async def _failed(self, email: str, client: str, now: int) -> None:
        window_start = now - FAILURE_WINDOW * 1_000_000_000
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM sign_in_failures WHERE first_time <= ?", (window_start,))
            await tx.execute(
                "INSERT INTO sign_in_failures (email, client, failures, first_time) VALUES (?, ?, 1, ?) "
                "ON CONFLICT (email, client) DO UPDATE SET failures = sign_in_failures.failures + 1",
                (email, client, now),
            )

    @staticmethod
    async def _forget_failures(tx: Tx, email: str, client: str) -> None:
        await tx.execute("DELETE FROM sign_in_failures WHERE email = ? AND client = ?", (email, client))


def _throttled(whose: str, first_time: int, now: int) -> None:
    """Refuse until the window that began at `first_time` ends."""
    seconds = max(1, -(-(first_time + FAILURE_WINDOW * 1_000_000_000 - now) // 1_000_000_000))
    raise ResourceExhausted(
        f"too many failed sign-ins {whose}; try again in {seconds}s",
        reason="TOO_MANY_SIGN_IN_ATTEMPTS",
        metadata={"retry_after_seconds": str(seconds)},
    )


async def _decoy_hash() -> str:
    if not _decoy:
        _decoy.append(await hash_password(secrets.token_urlsafe(16)))
    return _decoy[0]


A = TypeVar("A", bound=Message)


class AccountMethods(Generic[A]):
    """The methods every service whose resource signs in (passengers, drivers) serves alike: SignIn,
    RefreshSession, SignOut and ChangePassword, and the owner check. A servicer lists this class
    before its generated base, and says which `Session` message it answers and in which field
    that message carries the account."""

    session: ClassVar[type[Any]]
    """The service's `Session` message."""
    account_field: ClassVar[str]
    """The field of `session` that holds the signed-in resource (`passenger`, `driver`)."""
    store: Store[A]
    accounts: Accounts

    async def SignIn(self, request: Any, context: Any) -> Any:
        grant = await self.accounts.sign_in(request.email, request.password, caller().client)
        return await self._session(grant)

    async def RefreshSession(self, request: Any, context: Any) -> Any:
        return await self._session(await self.accounts.refresh(request.refresh_token))

    async def SignOut(self, request: Any, context: Any) -> Any:
        await self.accounts.sign_out(request.refresh_token)
        return Empty()

    async def ChangePassword(self, request: Any, context: Any) -> Any:
        self._mine(request.name)
        await self.store.get(request.name)  # NOT_FOUND for an operator naming no one
        account = self.store.id_of(request.name)
        grant = await self.accounts.change_password(
            account, request.current_password, request.new_password, caller().client
        )
        return await self._session(grant)

    def _mine(self, name: str, field: str = "name") -> None:
        """Only the account itself (or an operator) acts on it; to anyone else it does not exist."""
        require_owner([name], lambda: self.store.not_found(self.store.id_of(name, field)))

    async def _session(self, grant: Grant) -> Any:
        return self.session(
            access_token=grant.access.token,
            expire_time=timestamp_from_ns(int(grant.access.expire_time * 1e9)),
            refresh_token=grant.refresh_token,
            refresh_expire_time=timestamp_from_ns(int(grant.refresh_expire_time * 1e9)),
            **{self.account_field: await self.store.get(grant.account)},
        )
