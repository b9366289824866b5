"""PassengerService over a real grpc.aio channel to an in-process server."""

from __future__ import annotations

import re

import grpc
import pytest
from google.protobuf import empty_pb2, field_mask_pb2
from rideshare.passengers.v1 import passengers_pb2 as pb

NAME = re.compile(r"^passengers/[0-9a-f]{32}$")
DOMAIN = "passengers.rideshare"


def create(passengers, request_id: str = "", **fields) -> pb.Passenger:
    values = {"display_name": "Ada Lovelace", "email": "ada@example.com"}
    values.update(fields)
    request = pb.CreatePassengerRequest(passenger=pb.Passenger(**values), request_id=request_id)
    return passengers.call(passengers.stub.CreatePassenger(request))


def get(passengers, name: str) -> pb.Passenger:
    return passengers.call(passengers.stub.GetPassenger(pb.GetPassengerRequest(name=name)))


def update(passengers, passenger: pb.Passenger, *paths: str, request_id: str = "") -> pb.Passenger:
    request = pb.UpdatePassengerRequest(
        passenger=passenger, update_mask=field_mask_pb2.FieldMask(paths=list(paths)), request_id=request_id
    )
    return passengers.call(passengers.stub.UpdatePassenger(request))


def list_all(passengers, page_size: int) -> list[list[str]]:
    """The names on each page, following next_page_token to the end."""
    pages, token = [], ""
    while True:
        request = pb.ListPassengersRequest(page_size=page_size, page_token=token)
        response = passengers.call(passengers.stub.ListPassengers(request))
        pages.append([p.name for p in response.passengers])
        token = response.next_page_token
        if not token:
            return pages


def test_create_get_update_delete(passengers):
    created = create(passengers, display_name="  Ada Lovelace ", phone="+447700900123")

    assert NAME.match(created.name)
    assert created.display_name == "Ada Lovelace"
    assert (created.email, created.phone) == ("ada@example.com", "+447700900123")
    assert created.create_time.seconds > 0
    assert created.update_time == created.create_time

    assert get(passengers, created.name) == created

    changed = update(passengers, pb.Passenger(name=created.name, display_name="Countess"), "display_name")
    assert changed.display_name == "Countess"
    assert changed.email == created.email
    assert changed.create_time == created.create_time
    assert changed.update_time.ToNanoseconds() >= created.update_time.ToNanoseconds()
    assert get(passengers, created.name) == changed

    deleted = passengers.call(passengers.stub.DeletePassenger(pb.DeletePassengerRequest(name=created.name)))
    assert deleted == empty_pb2.Empty()

    failure = passengers.fail(passengers.stub.GetPassenger(pb.GetPassengerRequest(name=created.name)))
    assert failure.code is grpc.StatusCode.NOT_FOUND
    assert failure.message == f"{created.name} does not exist"
    assert failure.info.reason == "PASSENGER_NOT_FOUND"
    assert failure.info.domain == DOMAIN
    assert dict(failure.info.metadata) == {"name": created.name}


def test_server_assigns_name_and_times_ignoring_what_the_client_sent(passengers):
    created = create(passengers, name="passengers/mine", create_time={"seconds": 1})

    assert created.name != "passengers/mine"
    assert NAME.match(created.name)
    assert created.create_time.seconds > 1


def test_delete_and_update_of_a_missing_passenger_are_not_found(passengers):
    missing = "passengers/" + "0" * 32

    deleting = passengers.fail(passengers.stub.DeletePassenger(pb.DeletePassengerRequest(name=missing)))
    updating = passengers.fail(
        passengers.stub.UpdatePassenger(
            pb.UpdatePassengerRequest(passenger=pb.Passenger(name=missing, display_name="X"))
        )
    )

    for failure in (deleting, updating):
        assert failure.code is grpc.StatusCode.NOT_FOUND
        assert failure.info.reason == "PASSENGER_NOT_FOUND"


def test_list_pages_through_everything_in_creation_order(passengers):
    names = [create(passengers, email=f"p{i}@example.com").name for i in range(7)]

    assert list_all(passengers, 3) == [names[0:3], names[3:6], names[6:7]]
    assert list_all(passengers, 0) == [names]
    assert list_all(passengers, 7) == [names]


def test_list_of_nothing_is_one_empty_page(passengers):
    assert list_all(passengers, 10) == [[]]


def test_list_skips_deleted_passengers_between_pages(passengers):
    names = [create(passengers, email=f"p{i}@example.com").name for i in range(4)]
    first = passengers.call(passengers.stub.ListPassengers(pb.ListPassengersRequest(page_size=2)))
    passengers.call(passengers.stub.DeletePassenger(pb.DeletePassengerRequest(name=names[2])))

    rest = passengers.call(
        passengers.stub.ListPassengers(
            pb.ListPassengersRequest(page_size=2, page_token=first.next_page_token)
        )
    )

    assert [p.name for p in rest.passengers] == [names[3]]
    assert rest.next_page_token == ""


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [({"page_token": "not-a-token"}, "page_token"), ({"page_size": -1}, "page_size")],
)
def test_bad_list_requests_name_the_field(passengers, request_fields, field):
    failure = passengers.fail(passengers.stub.ListPassengers(pb.ListPassengersRequest(**request_fields)))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == [field]
    assert failure.info.domain == DOMAIN


def test_update_with_a_mask_changes_only_the_masked_fields(passengers):
    created = create(passengers, phone="+447700900123")

    changed = update(
        passengers,
        pb.Passenger(name=created.name, display_name="Not applied", email="new@example.com"),
        "email",
    )

    assert changed.email == "new@example.com"
    assert changed.display_name == created.display_name
    assert changed.phone == created.phone


def test_a_masked_field_that_was_not_sent_is_cleared(passengers):
    created = create(passengers, phone="+447700900123")

    changed = update(passengers, pb.Passenger(name=created.name), "phone")

    assert changed.phone == ""
    assert get(passengers, created.name).phone == ""


def test_update_without_a_mask_changes_the_fields_that_were_sent(passengers):
    created = create(passengers, phone="+447700900123")

    changed = update(passengers, pb.Passenger(name=created.name, display_name="Grace"))

    assert changed.display_name == "Grace"
    assert (changed.email, changed.phone) == (created.email, created.phone)


def test_update_with_an_unknown_mask_path_is_invalid_argument(passengers):
    created = create(passengers)
    request = pb.UpdatePassengerRequest(
        passenger=pb.Passenger(name=created.name, display_name="X"),
        update_mask=field_mask_pb2.FieldMask(paths=["create_time"]),
    )

    failure = passengers.fail(passengers.stub.UpdatePassenger(request))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["update_mask"]
    assert get(passengers, created.name) == created


def test_update_that_breaks_the_profile_is_refused_and_changes_nothing(passengers):
    created = create(passengers)

    failure = passengers.fail(
        passengers.stub.UpdatePassenger(
            pb.UpdatePassengerRequest(passenger=pb.Passenger(name=created.name, email="nope"))
        )
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["passenger.email"]
    assert get(passengers, created.name) == created


def test_update_needs_a_well_formed_name(passengers):
    failure = passengers.fail(
        passengers.stub.UpdatePassenger(pb.UpdatePassengerRequest(passenger=pb.Passenger(name="drivers/1")))
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["passenger.name"]


def test_duplicate_email_is_already_exists_whatever_the_case(passengers):
    create(passengers, email="ada@example.com")

    failure = passengers.fail(
        passengers.stub.CreatePassenger(
            pb.CreatePassengerRequest(passenger=pb.Passenger(display_name="Eve", email="ADA@example.com"))
        )
    )

    assert failure.code is grpc.StatusCode.ALREADY_EXISTS
    assert failure.info.reason == "PASSENGER_EMAIL_TAKEN"
    assert failure.info.domain == DOMAIN
    assert len(list_all(passengers, 10)[0]) == 1


def test_update_to_a_taken_email_is_already_exists(passengers):
    create(passengers, email="ada@example.com")
    grace = create(passengers, email="grace@example.com")

    failure = passengers.fail(
        passengers.stub.UpdatePassenger(
            pb.UpdatePassengerRequest(passenger=pb.Passenger(name=grace.name, email="ada@example.com"))
        )
    )

    assert failure.code is grpc.StatusCode.ALREADY_EXISTS
    assert get(passengers, grace.name).email == "grace@example.com"


def test_invalid_email_and_phone_are_reported_together(passengers):
    request = pb.CreatePassengerRequest(
        passenger=pb.Passenger(display_name="Ada", email="ada-at-example", phone="0770 090")
    )

    failure = passengers.fail(passengers.stub.CreatePassenger(request))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["passenger.email", "passenger.phone"]
    assert failure.info.reason == "INVALID_ARGUMENT"
    assert failure.info.domain == DOMAIN
    assert "E.164" in failure.violations[1].description


@pytest.mark.parametrize(
    ("passenger", "fields"),
    [
        (None, ["passenger"]),
        (pb.Passenger(), ["passenger.display_name", "passenger.email"]),
        (pb.Passenger(display_name="   ", email="ada@example.com"), ["passenger.display_name"]),
        (pb.Passenger(display_name="x" * 101, email="ada@example.com"), ["passenger.display_name"]),
        (pb.Passenger(display_name="tab\there", email="ada@example.com"), ["passenger.display_name"]),
    ],
)
def test_incomplete_or_bad_profiles_are_refused(passengers, passenger, fields):
    request = pb.CreatePassengerRequest(passenger=passenger)

    failure = passengers.fail(passengers.stub.CreatePassenger(request))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == fields
    assert list_all(passengers, 10) == [[]]


def test_get_with_a_malformed_name_is_invalid_argument(passengers):
    failure = passengers.fail(passengers.stub.GetPassenger(pb.GetPassengerRequest(name="passengers")))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["name"]


def test_create_replayed_with_the_same_request_id_returns_the_same_passenger(passengers):
    first = create(passengers, request_id="req-1")
    again = create(passengers, request_id="req-1")

    assert again == first
    assert list_all(passengers, 10) == [[first.name]]


def test_request_id_reused_for_a_different_create_is_refused(passengers):
    create(passengers, request_id="req-1")

    failure = passengers.fail(
        passengers.stub.CreatePassenger(
            pb.CreatePassengerRequest(
                passenger=pb.Passenger(display_name="Grace", email="grace@example.com"), request_id="req-1"
            )
        )
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "REQUEST_ID_REUSED"
    assert failure.fields == ["request_id"]
    assert len(list_all(passengers, 10)[0]) == 1


def test_update_and_delete_replays_return_the_first_answer(passengers):
    created = create(passengers)
    patch = pb.Passenger(name=created.name, display_name="Grace")

    first = update(passengers, patch, request_id="u-1")
    update(passengers, pb.Passenger(name=created.name, display_name="Later"))
    replayed = update(passengers, patch, request_id="u-1")
    assert replayed == first

    delete = pb.DeletePassengerRequest(name=created.name, request_id="d-1")
    passengers.call(passengers.stub.DeletePassenger(delete))
    assert passengers.call(passengers.stub.DeletePassenger(delete)) == empty_pb2.Empty()
