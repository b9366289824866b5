"""The signing keys of access tokens: made, rotated and retired (`mesh signing-keys`, and `mesh up`).

    mesh signing-keys [list]        every key: when made, whether issuers sign with it, when it may go
    mesh signing-keys rotate        a new key issuers sign with from their next sign-in; retires what may go
    mesh signing-keys retire [KID]  without KID: the keys whose tokens have all expired; with KID: that
                                    key now (its tokens stop working at once: for a key that leaked)

The layout, and who reads what, is services/runtime/tokens.py's. A key stops
signing when a newer one is made; the tokens it signed last at most
`[sessions] access_token_lifetime` after that, so it may be retired then
without refusing anyone. The newest key is never retired: rotate first.
Private keys are written 0600 in a 0700 directory; `mesh up` makes the first
key when there is none.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.runtime.config import MeshConfig
from services.runtime.tokens import KID, keys_dir, kid_time, new_kid


@dataclass(frozen=True)
class SigningKey:
    kid: str
    created: float
    signing: bool
    """The newest key: issuers sign with it."""
    retirable_at: float | None
    """When every token it signed will have expired; None for the newest."""
    has_private: bool


def keys(config: MeshConfig) -> list[SigningKey]:
    """Every key with a public half, oldest first."""
    root = keys_dir(config)
    kids = sorted(p.stem for p in (root / "public").glob("*.pem") if KID.match(p.stem))
    lifetime = config.sessions.access_token_lifetime
    listed = []
    for index, kid in enumerate(kids):
        successor = kids[index + 1] if index + 1 < len(kids) else None
        listed.append(
            SigningKey(
                kid,
                kid_time(kid),
                successor is None,
                None if successor is None else kid_time(successor) + lifetime,
                (root / "private" / f"{kid}.pem").exists(),
            )
        )
    return listed


def create(config: MeshConfig, now: float | None = None) -> str:
    """A new key pair; its kid. Issuers sign with it from their next sign-in."""
    root = keys_dir(config)
    private_dir, public_dir = root / "private", root / "public"
    private_dir.mkdir(parents=True, exist_ok=True)
    public_dir.mkdir(parents=True, exist_ok=True)
    private_dir.chmod(0o700)
    existing = keys(config)
    kid = new_kid(time.time() if now is None else now, existing[-1].kid if existing else None)
    key = ed25519.Ed25519PrivateKey.generate()
    # The public half first: a verifier must know a key before any token signed with it can arrive.
    _write(
        public_dir / f"{kid}.pem",
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        0o644,
    )
    _write(
        private_dir / f"{kid}.pem",
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        0o600,
    )
    return kid


def ensure(config: MeshConfig) -> str | None:
    """The kid of a key made because there was none, else None."""
    if any(k.has_private for k in keys(config)):
        return None
    return create(config)


def retire(config: MeshConfig, kid: str | None = None, now: float | None = None) -> list[str]:
    """Remove `kid` (any key but the newest), or else every key whose tokens have all expired."""
    moment = time.time() if now is None else now
    listed = keys(config)
    if kid is not None:
        found = next((k for k in listed if k.kid == kid), None)
        if found is None:
            raise SigningKeyProblem(f"no signing key {kid!r}")
        if found.signing:
            raise SigningKeyProblem(f"{kid} is the key issuers sign with; rotate first, then retire it")
        chosen = [found]
    else:
        chosen = [k for k in listed if k.retirable_at is not None and k.retirable_at <= moment]
    root = keys_dir(config)
    for key in chosen:
        # The private half first: once it is gone nothing new is signed with the key.
        (root / "private" / f"{key.kid}.pem").unlink(missing_ok=True)
        (root / "public" / f"{key.kid}.pem").unlink(missing_ok=True)
    return [k.kid for k in chosen]


class SigningKeyProblem(Exception):
    """A `mesh signing-keys` request that cannot be done."""


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write whole or not at all (a reader never sees half a key), with `mode` from the start."""
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def command(config: MeshConfig, action: str, kid: str | None = None) -> int:
    """`mesh signing-keys list | rotate | retire [KID]`."""
    try:
        if action == "rotate":
            made = create(config)
            print(f"created signing key {made}; issuers sign with it from their next sign-in")
            for gone in retire(config):
                print(f"retired signing key {gone} (every token it signed has expired)")
        elif action == "retire":
            retired = retire(config, kid)
            for name in retired:
                print(f"retired signing key {name}")
            if not retired:
                print("no key to retire: each is the newest, or signed tokens that have not expired yet")
        print(_table(keys(config), time.time()))
    except SigningKeyProblem as exc:
        print(f"mesh signing-keys {action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _table(listed: list[SigningKey], now: float) -> str:
    if not listed:
        return "no signing keys; `mesh signing-keys rotate` makes one"
    rows = [("KID", "CREATED", "STATUS")]
    for key in listed:
        if key.signing:
            status = "signing" if key.has_private else "newest, but its private key is missing"
        elif key.retirable_at is not None and key.retirable_at <= now:
            status = "verifying only; may be retired"
        else:
            status = f"verifying only; may be retired from {_iso(key.retirable_at or now)}"
        rows.append((key.kid, _iso(key.created), status))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
