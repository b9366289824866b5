"""Passengers sign in: the password set at registration, sessions refreshed once each, throttled failures."""

from __future__ import annotations

import time

import grpc
import pytest
from rideshare.passengers.v1 import passengers_pb2 as pb

from services.mesh import signing
from services.runtime import sessions
from services.runtime.tokens import Verifier

PASSWORD = "correct horse battery"


@pytest.fixture
def passengers(serve, mesh_config):
    signing.create(mesh_config)
    return serve()


def register(passengers, email="ada@example.com", password=PASSWORD) -> pb.Passenger:
    draft = pb.Passenger(display_name="Ada", email=email, password=password)
    return passengers.call(passengers.stub.CreatePassenger(pb.CreatePassengerRequest(passenger=draft)))


def sign_in(passengers, email="ada@example.com", password=PASSWORD) -> pb.Session:
    return passengers.call(passengers.stub.SignIn(pb.SignInRequest(email=email, password=password)))


def refresh(passengers, token: str) -> pb.Session:
    return passengers.call(passengers.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=token)))


def test_the_password_is_never_returned_and_stored_only_as_an_argon2id_hash(passengers, mesh_config):
    created = register(passengers)

    assert created.password == ""
    got = passengers.call(passengers.stub.GetPassenger(pb.GetPassengerRequest(name=created.name)))
    assert got.password == ""
    database = (mesh_config.data_dir / "passengers" / "passengers.db").read_bytes()
    wal = mesh_config.data_dir / "passengers" / "passengers.db-wal"
    stored = database + (wal.read_bytes() if wal.exists() else b"")
    assert PASSWORD.encode() not in stored
    assert b"$argon2id$" in stored


def test_a_session_carries_a_token_for_the_passenger_and_the_passenger(passengers, mesh_config):
    created = register(passengers)

    session = sign_in(passengers, email="ADA@example.com")  # any case

    assert session.passenger == created
    claims = Verifier(mesh_config).verify(session.access_token)
    assert claims.subject == created.name
    assert abs(session.expire_time.seconds - (time.time() + 900)) < 60
    assert session.refresh_token.startswith("rt_")
    assert session.refresh_expire_time.seconds > session.expire_time.seconds


def test_a_wrong_password_and_an_unknown_email_fail_alike(passengers):
    register(passengers)
    register(passengers, email="nopassword@example.com", password="")

    failures = [
        passengers.fail(passengers.stub.SignIn(pb.SignInRequest(email=email, password=password)))
        for email, password in (
            ("ada@example.com", "wrong password"),
            ("nobody@example.com", PASSWORD),
            ("nopassword@example.com", PASSWORD),
        )
    ]

    assert {(f.code, f.info.reason, f.message) for f in failures} == {
        (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS", "the email or password is wrong")
    }


def test_failures_for_one_email_are_throttled_known_or_not(passengers):
    register(passengers)
    for email in ("ada@example.com", "nobody@example.com"):
        for _ in range(sessions.MAX_FAILURES):
            failed = passengers.fail(
                passengers.stub.SignIn(pb.SignInRequest(email=email, password="guess1234"))
            )
            assert failed.info.reason == "INVALID_CREDENTIALS"

        throttled = passengers.fail(passengers.stub.SignIn(pb.SignInRequest(email=email, password=PASSWORD)))

        assert throttled.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert throttled.info.reason == "TOO_MANY_SIGN_IN_ATTEMPTS"
    assert register(passengers, email="grace@example.com").name  # other emails are not held up
    assert sign_in(passengers, email="grace@example.com").passenger.email == "grace@example.com"


def test_a_bad_password_is_refused_without_being_quoted(passengers):
    failed = passengers.fail(
        passengers.stub.CreatePassenger(
            pb.CreatePassengerRequest(
                passenger=pb.Passenger(display_name="A", email="a@b.co", password="short")
            )
        )
    )

    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.fields == ["passenger.password"]
    assert "short" not in failed.message
    assert "short" not in str(failed.violations)


def test_a_refresh_token_works_once_and_a_reused_one_ends_the_sign_in(passengers, mesh_config):
    created = register(passengers)
    first = sign_in(passengers)

    second = refresh(passengers, first.refresh_token)

    assert second.passenger == created
    assert second.refresh_token != first.refresh_token
    assert Verifier(mesh_config).verify(second.access_token).subject == created.name
    reused = passengers.fail(
        passengers.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=first.refresh_token))
    )
    assert (reused.code, reused.info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_INVALID")
    # The thief and the owner both lose the session: the newer token of that sign-in is gone too.
    ended = passengers.fail(
        passengers.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=second.refresh_token))
    )
    assert ended.info.reason == "REFRESH_TOKEN_INVALID"
    assert refresh(passengers, sign_in(passengers).refresh_token).passenger == created


def test_deleting_a_passenger_ends_its_sessions(passengers):
    created = register(passengers)
    session = sign_in(passengers)

    passengers.call(passengers.stub.DeletePassenger(pb.DeletePassengerRequest(name=created.name)))

    refused = passengers.fail(
        passengers.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=session.refresh_token))
    )
    assert refused.info.reason == "REFRESH_TOKEN_INVALID"


def test_the_password_cannot_be_changed_through_an_update(passengers):
    created = register(passengers)

    failed = passengers.fail(
        passengers.stub.UpdatePassenger(
            pb.UpdatePassengerRequest(
                passenger=pb.Passenger(name=created.name, password="another password"),
                update_mask={"paths": ["password"]},
            )
        )
    )

    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sign_in(passengers).passenger.name == created.name


def test_without_a_signing_key_sign_in_says_what_to_do(serve):
    bare = serve()
    register(bare)

    failed = bare.fail(bare.stub.SignIn(pb.SignInRequest(email="ada@example.com", password=PASSWORD)))

    assert (failed.code, failed.info.reason) == (grpc.StatusCode.UNAVAILABLE, "NO_SIGNING_KEY")
    assert "mesh signing-keys rotate" in failed.message


# -- the ways out: signing out, changing the password -----------------------------------------------------


def sign_out(passengers, token: str) -> None:
    passengers.call(passengers.stub.SignOut(pb.SignOutRequest(refresh_token=token)))


def change_password(passengers, name: str, current: str, new: str):
    request = pb.ChangePasswordRequest(name=name, current_password=current, new_password=new)
    return passengers.stub.ChangePassword(request)


def test_signing_out_ends_the_session_and_only_that_one(passengers):
    register(passengers)
    phone, laptop = sign_in(passengers), sign_in(passengers)
    refreshed = refresh(passengers, phone.refresh_token)

    sign_out(passengers, refreshed.refresh_token)

    for token in (phone.refresh_token, refreshed.refresh_token):
        ended = passengers.fail(passengers.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=token)))
        assert (ended.code, ended.info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_INVALID")
    assert refresh(passengers, laptop.refresh_token).passenger.email == "ada@example.com"


def test_signing_out_twice_or_with_an_unknown_token_is_no_error(passengers):
    register(passengers)
    session = sign_in(passengers)

    sign_out(passengers, session.refresh_token)
    sign_out(passengers, session.refresh_token)
    sign_out(passengers, "rt_not-a-token")

    missing = passengers.fail(passengers.stub.SignOut(pb.SignOutRequest()))
    assert (missing.code, missing.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["refresh_token"])


def test_changing_the_password_ends_every_other_session_and_starts_one(passengers, mesh_config):
    created = register(passengers)
    before = [sign_in(passengers), sign_in(passengers)]

    session = passengers.call(change_password(passengers, created.name, PASSWORD, "a new passphrase"))

    assert session.passenger == created
    assert Verifier(mesh_config).verify(session.access_token).subject == created.name
    for old in before:
        ended = passengers.fail(
            passengers.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=old.refresh_token))
        )
        assert ended.info.reason == "REFRESH_TOKEN_INVALID"
    assert refresh(passengers, session.refresh_token).passenger == created
    assert sign_in(passengers, password="a new passphrase").passenger == created
    old_password = passengers.fail(
        passengers.stub.SignIn(pb.SignInRequest(email=created.email, password=PASSWORD))
    )
    assert old_password.info.reason == "INVALID_CREDENTIALS"


def test_a_wrong_current_password_fails_like_a_wrong_sign_in_and_counts_towards_the_throttle(passengers):
    created = register(passengers)
    wrong_sign_in = passengers.fail(
        passengers.stub.SignIn(pb.SignInRequest(email=created.email, password="guess1234"))
    )

    wrong = [
        passengers.fail(change_password(passengers, created.name, "guess1234", "a new passphrase"))
        for _ in range(sessions.MAX_FAILURES - 1)
    ]

    assert {(f.code, f.info.reason, f.message) for f in wrong} == {
        (wrong_sign_in.code, wrong_sign_in.info.reason, wrong_sign_in.message)
    }
    throttled = passengers.fail(change_password(passengers, created.name, PASSWORD, "a new passphrase"))
    assert throttled.info.reason == "TOO_MANY_SIGN_IN_ATTEMPTS"


def test_a_new_password_must_be_a_password_and_is_never_quoted(passengers):
    created = register(passengers)

    short = passengers.fail(change_password(passengers, created.name, PASSWORD, "short"))
    no_current = passengers.fail(change_password(passengers, created.name, "", "a new passphrase"))
    nobody = passengers.fail(change_password(passengers, "passengers/nobody", PASSWORD, "a new passphrase"))

    assert (short.code, short.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["new_password"])
    assert "short" not in short.message
    assert "short" not in str(short.violations)
    assert (no_current.code, no_current.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["current_password"])
    assert (nobody.code, nobody.info.reason) == (grpc.StatusCode.NOT_FOUND, "PASSENGER_NOT_FOUND")
    assert sign_in(passengers).passenger == created  # nothing changed


# -- whose failures count --------------------------------------------------------------------------------


def from_address(address: str) -> tuple[tuple[str, str], ...]:
    """The metadata the gateway adds for a request from `address` (believed without TLS)."""
    return (("x-mesh-client", address),)


def sign_in_from(passengers, address: str, email="ada@example.com", password=PASSWORD):
    request = pb.SignInRequest(email=email, password=password)
    return passengers.stub.SignIn(request, metadata=from_address(address))


def test_failures_from_one_address_do_not_lock_the_owner_out_from_another(passengers):
    register(passengers)
    for _ in range(sessions.MAX_FAILURES):
        failed = passengers.fail(sign_in_from(passengers, "203.0.113.66", password="guess1234"))
        assert failed.info.reason == "INVALID_CREDENTIALS"

    attacker = passengers.fail(sign_in_from(passengers, "203.0.113.66"))  # even with the password
    owner = passengers.call(sign_in_from(passengers, "198.51.100.7"))

    assert (attacker.code, attacker.info.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_SIGN_IN_ATTEMPTS",
    )
    assert int(attacker.info.metadata["retry_after_seconds"]) > 0
    assert owner.passenger.email == "ada@example.com"


def test_one_address_guessing_across_many_emails_is_refused_for_all_of_them(passengers, monkeypatch):
    monkeypatch.setattr(sessions, "MAX_CLIENT_FAILURES", 4)
    register(passengers)
    for n in range(4):
        passengers.fail(sign_in_from(passengers, "203.0.113.66", email=f"someone{n}@example.com"))

    sprayer = passengers.fail(sign_in_from(passengers, "203.0.113.66"))
    elsewhere = passengers.call(sign_in_from(passengers, "198.51.100.7"))

    assert sprayer.info.reason == "TOO_MANY_SIGN_IN_ATTEMPTS"
    assert "from this address" in sprayer.message
    assert elsewhere.passenger.email == "ada@example.com"


def test_a_success_forgets_only_its_own_addresss_failures(passengers):
    register(passengers)
    for address in ("203.0.113.66", "198.51.100.7"):
        for _ in range(sessions.MAX_FAILURES - 1):
            passengers.fail(sign_in_from(passengers, address, password="guess1234"))

    passengers.call(sign_in_from(passengers, "198.51.100.7"))
    passengers.fail(sign_in_from(passengers, "198.51.100.7", password="guess1234"))
    passengers.fail(sign_in_from(passengers, "203.0.113.66", password="guess1234"))

    assert passengers.call(sign_in_from(passengers, "198.51.100.7")).passenger.email == "ada@example.com"
    refused = passengers.fail(sign_in_from(passengers, "203.0.113.66"))
    assert refused.info.reason == "TOO_MANY_SIGN_IN_ATTEMPTS"
