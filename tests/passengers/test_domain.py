"""The passenger rules, without a server."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2
from rideshare.passengers.v1 import passengers_pb2 as pb

from services.passengers import domain
from services.runtime.errors import InvalidArgument


def fields_refused(passenger: pb.Passenger) -> list[str]:
    try:
        domain.check_profile(passenger, "passenger")
    except InvalidArgument as error:
        return [v.field for v in error.violations]
    return []


@pytest.mark.parametrize("email", ["ada@example.com", "a.b+c@mail.example.co.uk", "x@y.io"])
def test_plausible_emails_pass(email):
    assert fields_refused(pb.Passenger(display_name="Ada", email=email)) == []


@pytest.mark.parametrize(
    "email",
    [
        "",
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "a b@example.com",
        "a@b@example.com",
        "ada@example.",
        "a" * 65 + "@example.com",
        "a@" + "b" * 250 + ".com",
    ],
)
def test_implausible_emails_are_refused(email):
    assert fields_refused(pb.Passenger(display_name="Ada", email=email)) == ["passenger.email"]


@pytest.mark.parametrize("phone", ["", "+447700900123", "+15551234", "+123456789012345"])
def test_e164_phones_or_none_pass(phone):
    assert fields_refused(pb.Passenger(display_name="Ada", email="a@b.io", phone=phone)) == []


@pytest.mark.parametrize(
    "phone", ["447700900123", "+0447700900", "+44 7700 900123", "+12345", "+1234567890123456"]
)
def test_other_phones_are_refused(phone):
    assert fields_refused(pb.Passenger(display_name="Ada", email="a@b.io", phone=phone)) == [
        "passenger.phone"
    ]


def test_display_name_of_exactly_100_characters_passes():
    assert fields_refused(pb.Passenger(display_name="x" * 100, email="a@b.io")) == []


def test_new_passenger_gets_a_fresh_name_and_equal_times():
    first = domain.new_passenger(pb.Passenger(display_name=" Ada ", email="a@b.io", name="passengers/x"))
    second = domain.new_passenger(pb.Passenger(display_name="Ada", email="a@b.io"))

    assert first.name != second.name
    assert first.name != "passengers/x"
    assert first.display_name == "Ada"
    assert first.create_time == first.update_time


def test_updated_passenger_leaves_the_current_one_untouched():
    current = domain.new_passenger(pb.Passenger(display_name="Ada", email="a@b.io"))
    snapshot = pb.Passenger()
    snapshot.CopyFrom(current)
    request = pb.UpdatePassengerRequest(
        passenger=pb.Passenger(name=current.name, display_name=" Grace "),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
    )

    changed = domain.updated_passenger(current, request)

    assert current == snapshot
    assert changed.display_name == "Grace"
    assert changed.create_time == current.create_time
