"""Access tokens: what the issuers sign, what the verifier accepts, and keys rotated without downtime."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path

import jwt
import pytest

from services.mesh import signing
from services.mesh.cli import main
from services.runtime import tokens
from services.runtime.config import MeshConfig, load_config
from services.runtime.errors import ConfigError

from ..conftest import MESH_TOML, write_mesh_file

PASSENGER = "passengers/0123456789abcdef0123456789abcdef"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MeshConfig:
    monkeypatch.setattr(tokens, "CHECK_EVERY", 0.0)  # see every key change at once
    loaded = load_config(write_mesh_file(tmp_path), env={})
    signing.create(loaded)
    return loaded


def claims_of(token: str) -> tuple[dict, dict]:
    header, payload, _ = token.split(".")
    return tuple(
        json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in (header, payload)
    )


def hmac_signed(claims: dict, kid: str, secret: bytes) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    signed = part(json.dumps({"alg": "HS256", "kid": kid}).encode()) + "." + part(json.dumps(claims).encode())
    return signed + "." + part(hmac.new(secret, signed.encode(), hashlib.sha256).digest())


def test_a_token_names_its_account_issuer_audience_key_and_lifetime(config):
    before = int(time.time())
    issued = tokens.Issuer(config, "passengers").issue(PASSENGER)

    header, claims = claims_of(issued.token)
    assert header["alg"] == "EdDSA"
    assert header["kid"] == signing.keys(config)[-1].kid
    assert claims["sub"] == PASSENGER
    assert claims["iss"] == "spiffe://rideshare.local/service/passengers"
    assert claims["aud"] == "spiffe://rideshare.local/service/gateway"
    assert before <= claims["iat"] <= claims["iat"] + 900 == claims["exp"] == issued.expire_time
    verified = tokens.Verifier(config).verify(issued.token)
    assert (verified.subject, verified.issuer) == (PASSENGER, claims["iss"])


def test_an_expired_token_is_refused_as_expired(config):
    issued = tokens.Issuer(config, "passengers").issue(PASSENGER, now=time.time() - 901)

    with pytest.raises(tokens.TokenError) as refused:
        tokens.Verifier(config).verify(issued.token)
    assert refused.value.reason == "TOKEN_EXPIRED"


def test_a_tampered_token_is_invalid(config):
    token = tokens.Issuer(config, "passengers").issue(PASSENGER).token
    header, payload, signature = token.split(".")
    _, claims = claims_of(token)
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "passengers/other"}).encode())
    verifier = tokens.Verifier(config)

    for bad in (
        f"{header}.{forged.decode().rstrip('=')}.{signature}",
        f"{header}.{payload}.{signature[:-4]}AAAA",
        "not a token",
        "",
        "a" * 5000,
    ):
        with pytest.raises(tokens.TokenError) as refused:
            verifier.verify(bad)
        assert refused.value.reason == "TOKEN_INVALID", bad


def test_only_eddsa_signatures_by_a_key_of_the_mesh_pass(config, tmp_path):
    verifier = tokens.Verifier(config)
    kid = signing.keys(config)[-1].kid
    claims = {"sub": PASSENGER, "iss": tokens.issuer_id(config, "passengers"), "aud": tokens.audience(config)}
    claims |= {"iat": int(time.time()), "exp": int(time.time()) + 60}
    public = (tokens.keys_dir(config) / "public" / f"{kid}.pem").read_bytes()
    (tmp_path / "other").mkdir()
    other = load_config(write_mesh_file(tmp_path / "other"), env={})
    signing.create(other)
    foreign = tokens.Issuer(other, "passengers").issue(PASSENGER).token

    for token in (
        hmac_signed(claims, kid, public),  # the public key as an HMAC secret (the classic confusion)
        jwt.encode(claims, None, algorithm="none", headers={"kid": kid}),
        foreign,  # another mesh's key
    ):
        with pytest.raises(tokens.TokenError) as refused:
            verifier.verify(token)
        assert refused.value.reason == "TOKEN_INVALID"


def test_the_audience_the_issuer_and_the_subjects_collection_are_checked(config):
    issuer = tokens.Issuer(config, "drivers")
    verifier = tokens.Verifier(config)

    assert verifier.verify(issuer.issue("drivers/d1").token).subject == "drivers/d1"
    for token in (
        issuer.issue(PASSENGER).token,  # drivers vouch for drivers only
        tokens.Issuer(config, "billing").issue(PASSENGER).token,  # not an issuer
    ):
        with pytest.raises(tokens.TokenError):
            verifier.verify(token)
    issuer.audience = "spiffe://rideshare.local/service/trips"
    with pytest.raises(tokens.TokenError):
        verifier.verify(issuer.issue("drivers/d1").token)


def test_a_rotation_keeps_old_tokens_valid_until_their_key_is_retired(config):
    issuer, verifier = tokens.Issuer(config, "passengers"), tokens.Verifier(config)
    old = issuer.issue(PASSENGER).token
    verifier.verify(old)

    newer = signing.create(config)
    new = issuer.issue(PASSENGER).token

    assert claims_of(new)[0]["kid"] == newer, "issuers sign with the newest key"
    assert verifier.verify(old).subject == verifier.verify(new).subject == PASSENGER
    assert signing.retire(config) == [], "the old key's tokens have not expired yet"
    later = time.time() + config.sessions.access_token_lifetime + 1
    assert signing.retire(config, now=later) == [claims_of(old)[0]["kid"]]
    with pytest.raises(tokens.TokenError) as refused:
        verifier.verify(old)
    assert refused.value.reason == "TOKEN_INVALID"
    assert verifier.verify(new).subject == PASSENGER


def test_the_newest_key_is_never_retired_and_a_leaked_one_goes_at_once(config):
    verifier = tokens.Verifier(config)
    first = signing.keys(config)[-1].kid
    with pytest.raises(signing.SigningKeyProblem, match="rotate first"):
        signing.retire(config, first)
    token = tokens.Issuer(config, "passengers").issue(PASSENGER).token
    signing.create(config)

    assert signing.retire(config, first) == [first]
    with pytest.raises(tokens.TokenError):
        verifier.verify(token)


def test_without_a_key_the_issuer_says_how_to_make_one(tmp_path):
    bare = load_config(write_mesh_file(tmp_path), env={})

    with pytest.raises(tokens.NoSigningKey, match="mesh signing-keys rotate"):
        tokens.Issuer(bare, "passengers").issue(PASSENGER)
    assert signing.ensure(bare) is not None
    assert signing.ensure(bare) is None, "a key exists: nothing more is made"


def test_private_keys_are_for_their_owner_only(config):
    root = tokens.keys_dir(config)
    assert root == config.data_dir / "signing-keys"
    assert stat.S_IMODE((root / "private").stat().st_mode) == 0o700
    for path in (root / "private").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for path in (root / "public").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_mesh_signing_keys_rotates_lists_and_retires(tmp_path, capsys):
    path = write_mesh_file(tmp_path)

    assert main(["--config", str(path), "signing-keys"]) == 0
    assert "no signing keys" in capsys.readouterr().out
    assert main(["--config", str(path), "signing-keys", "rotate"]) == 0
    assert main(["--config", str(path), "signing-keys", "rotate"]) == 0
    out = capsys.readouterr().out
    assert "verifying only; may be retired from" in out
    assert out.rstrip().endswith("signing")
    assert main(["--config", str(path), "signing-keys", "retire", "nope"]) == 1
    assert "no signing key 'nope'" in capsys.readouterr().err


def test_sessions_config_is_checked(tmp_path):
    config = load_config(
        write_mesh_file(tmp_path, MESH_TOML + '[sessions]\naccess_token_lifetime = "5m"\nkeys_dir = "k"\n'),
        env={},
    )
    assert config.sessions.access_token_lifetime == 300
    assert config.sessions.keys_dir == tmp_path / "k"
    for text, key in (
        ('[sessions]\naccess_token_lifetime = "2d"\n', "sessions.access_token_lifetime"),
        ('[sessions]\nrefresh_token_lifetime = "10m"\n', "sessions.refresh_token_lifetime"),
    ):
        with pytest.raises(ConfigError) as failed:
            load_config(write_mesh_file(tmp_path, MESH_TOML + text), env={})
        assert failed.value.key == key


def test_a_token_remembered_as_valid_still_expires(config):
    verifier = tokens.Verifier(config)
    issued = tokens.Issuer(config, "passengers").issue(PASSENGER)
    assert verifier.verify(issued.token).subject == PASSENGER

    with pytest.raises(tokens.TokenError) as refused:
        verifier.verify(issued.token, now=issued.expire_time)
    assert refused.value.reason == "TOKEN_EXPIRED"
