"""Validation from the contract's annotations, on the passenger requests."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2
from rideshare.passengers.v1 import passengers_pb2 as pb

from services.runtime.errors import InvalidArgument
from services.runtime.validation import RequestValidator, ResourceRegistry

ID = "0123456789abcdef0123456789abcdef"


def validator(request_type) -> RequestValidator:
    registry = ResourceRegistry()
    registry.add_file(pb.DESCRIPTOR)
    return RequestValidator(request_type.DESCRIPTOR, registry)


def violations(request) -> list[tuple[str, str]]:
    """(field, reason) of every violation, or [] when the request is valid."""
    try:
        validator(type(request))(request)
    except InvalidArgument as error:
        return [(v.field, v.reason) for v in error.violations]
    return []


def test_a_complete_create_request_is_valid():
    request = pb.CreatePassengerRequest(passenger=pb.Passenger(display_name="Ada", email="ada@example.com"))

    assert violations(request) == []


def test_missing_required_message_is_reported():
    assert violations(pb.CreatePassengerRequest()) == [("passenger", "REQUIRED")]


def test_missing_nested_required_fields_are_all_reported_at_once():
    request = pb.CreatePassengerRequest(passenger=pb.Passenger(phone="+447700900123"), request_id="x" * 129)

    with pytest.raises(InvalidArgument) as caught:
        validator(pb.CreatePassengerRequest)(request)

    found = {v.field: v for v in caught.value.violations}
    assert set(found) == {"passenger.display_name", "passenger.email", "request_id"}
    assert found["passenger.display_name"].description == "is required"
    assert found["request_id"].description == "must be at most 128 characters"
    assert found["request_id"].reason == "TOO_LONG"


def test_request_id_of_128_characters_is_accepted():
    request = pb.DeletePassengerRequest(name=f"passengers/{ID}", request_id="x" * 128)

    assert violations(request) == []


def test_output_only_fields_are_ignored():
    request = pb.CreatePassengerRequest(
        passenger=pb.Passenger(display_name="Ada", email="ada@example.com", create_time={"seconds": -5})
    )

    assert violations(request) == []


@pytest.mark.parametrize(
    "name",
    [
        "",
        "passenger/abc",
        "passengers/",
        "passengers/a/b",
        "drivers/abc",
        f"//passengers/{ID}",
        f"passengers/{ID}\n",
        "passengers/a b",
    ],
)
def test_malformed_or_missing_names_are_refused(name):
    found = violations(pb.GetPassengerRequest(name=name))

    assert found == [("name", "REQUIRED" if not name else "MALFORMED_NAME")]


def test_malformed_name_message_shows_the_expected_pattern():
    with pytest.raises(InvalidArgument) as caught:
        validator(pb.DeletePassengerRequest)(pb.DeletePassengerRequest(name="trips/1"))

    assert caught.value.violations[0].description == (
        "'trips/1' is not a resource name of the form \"passengers/{passenger}\""
    )


def test_well_formed_name_passes():
    assert violations(pb.GetPassengerRequest(name=f"passengers/{ID}")) == []


def test_negative_page_size_is_refused_but_zero_is_the_default():
    assert violations(pb.ListPassengersRequest(page_size=-1)) == [("page_size", "NEGATIVE")]
    assert violations(pb.ListPassengersRequest(page_size=0)) == []
    assert violations(pb.ListPassengersRequest()) == []


def test_update_sends_only_masked_fields_so_nested_required_is_not_enforced():
    request = pb.UpdatePassengerRequest(
        passenger=pb.Passenger(name=f"passengers/{ID}", phone="+447700900123"),
        update_mask=field_mask_pb2.FieldMask(paths=["phone"]),
    )

    assert violations(request) == []


def test_update_still_requires_the_passenger():
    assert violations(pb.UpdatePassengerRequest()) == [("passenger", "REQUIRED")]


def test_update_requires_a_well_formed_passenger_name():
    request = pb.UpdatePassengerRequest(passenger=pb.Passenger(name="people/7", display_name="Ada"))

    assert violations(request) == [("passenger.name", "MALFORMED_NAME")]


def test_create_accepts_any_name_the_client_sends_since_the_server_assigns_it():
    request = pb.CreatePassengerRequest(
        passenger=pb.Passenger(name="whatever", display_name="Ada", email="ada@example.com")
    )

    assert violations(request) == []
