"""Drivers sign in with an email (new to the contract) and the password set at registration."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from rideshare.drivers.v1 import drivers_pb2 as pb

from services.mesh import signing
from services.runtime.tokens import Verifier

PASSWORD = "correct horse battery"


@pytest.fixture
def drivers(drivers, mesh_config):
    signing.create(mesh_config)
    return drivers


def test_a_driver_with_an_email_and_a_password_signs_in(drivers, mesh_config):
    created = drivers.create(email="dee@example.com", password=PASSWORD)

    assert (created.email, created.password) == ("dee@example.com", "")
    session = drivers.call(drivers.stub.SignIn(pb.SignInRequest(email="Dee@Example.com", password=PASSWORD)))

    assert session.driver == created
    assert Verifier(mesh_config).verify(session.access_token).subject == created.name
    again = drivers.call(
        drivers.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=session.refresh_token))
    )
    assert again.driver.name == created.name
    wrong = drivers.fail(drivers.stub.SignIn(pb.SignInRequest(email="dee@example.com", password="not it!!")))
    assert (wrong.code, wrong.info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")


def test_a_password_needs_an_email_and_an_email_is_one_drivers(drivers):
    no_email = drivers.fail(
        drivers.stub.CreateDriver(
            pb.CreateDriverRequest(
                driver=pb.Driver(
                    display_name="Dee",
                    vehicle=pb.Vehicle(make="Toyota", model="Prius", license_plate="AB12 CDE"),
                    password=PASSWORD,
                )
            )
        )
    )
    assert (no_email.code, no_email.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["driver.email"])

    drivers.create(email="dee@example.com")
    taken = drivers.fail(
        drivers.stub.CreateDriver(
            pb.CreateDriverRequest(
                driver=pb.Driver(
                    display_name="Other",
                    vehicle=pb.Vehicle(make="Kia", model="Niro", license_plate="XY12 ZZZ"),
                    email="DEE@example.com",
                )
            )
        )
    )
    assert (taken.code, taken.info.reason) == (grpc.StatusCode.ALREADY_EXISTS, "DRIVER_EMAIL_TAKEN")
    assert drivers.create().email == "", "drivers registered without an email stay possible"
    assert drivers.create().email == ""


def test_a_driver_without_an_email_can_add_one(drivers):
    created = drivers.create()

    changed = drivers.call(
        drivers.stub.UpdateDriver(
            pb.UpdateDriverRequest(
                driver=pb.Driver(name=created.name, email="late@example.com"),
                update_mask=field_mask_pb2.FieldMask(paths=["email"]),
            )
        )
    )

    assert changed.email == "late@example.com"
    bad = drivers.fail(
        drivers.stub.UpdateDriver(
            pb.UpdateDriverRequest(
                driver=pb.Driver(name=created.name, email="not an email"),
                update_mask=field_mask_pb2.FieldMask(paths=["email"]),
            )
        )
    )
    assert bad.fields == ["driver.email"]


def test_a_driver_signs_out_and_changes_the_password(drivers):
    created = drivers.create(email="dee@example.com", password=PASSWORD)
    first, second = (
        drivers.call(drivers.stub.SignIn(pb.SignInRequest(email="dee@example.com", password=PASSWORD)))
        for _ in range(2)
    )

    drivers.call(drivers.stub.SignOut(pb.SignOutRequest(refresh_token=first.refresh_token)))
    signed_out = drivers.fail(
        drivers.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=first.refresh_token))
    )
    assert signed_out.info.reason == "REFRESH_TOKEN_INVALID"

    change = pb.ChangePasswordRequest(
        name=created.name, current_password="not it!!", new_password="new one!!"
    )
    wrong = drivers.fail(drivers.stub.ChangePassword(change))
    assert (wrong.code, wrong.info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    change.current_password = PASSWORD
    session = drivers.call(drivers.stub.ChangePassword(change))

    assert session.driver.name == created.name
    ended = drivers.fail(
        drivers.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=second.refresh_token))
    )
    assert ended.info.reason == "REFRESH_TOKEN_INVALID"
    again = drivers.call(drivers.stub.SignIn(pb.SignInRequest(email="dee@example.com", password="new one!!")))
    assert again.driver.name == created.name
