"""AIP helpers: resource ids, page tokens and sizes, update masks."""

from __future__ import annotations

import base64
import json

import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.type import money_pb2
from rideshare.passengers.v1 import passengers_pb2 as pb

from services.runtime import aip
from services.runtime.errors import InvalidArgument


def test_new_ids_are_url_safe_and_unique():
    ids = {aip.new_id() for _ in range(100)}

    assert len(ids) == 100
    assert all(len(i) == 32 and i.isalnum() and i.islower() for i in ids)


def test_resource_id_takes_the_id_out_of_a_name():
    assert aip.resource_id("passengers/abc", "passengers") == "abc"


@pytest.mark.parametrize("name", ["passengers/", "drivers/abc", "passengers/a/b", "abc"])
def test_resource_id_refuses_other_shapes_naming_the_field(name):
    with pytest.raises(InvalidArgument) as caught:
        aip.resource_id(name, "passengers", "passenger.name")

    assert [v.field for v in caught.value.violations] == ["passenger.name"]


def test_page_size_defaults_and_caps():
    assert aip.page_size(0) == aip.DEFAULT_PAGE_SIZE == 50
    assert aip.page_size(7) == 7
    assert aip.page_size(1000) == 1000
    assert aip.page_size(1001) == aip.MAX_PAGE_SIZE == 1000


@pytest.mark.parametrize("position", [0, 17, 2**40, "after-this", [3, "x"]])
def test_page_token_round_trips(position):
    token = aip.encode_page_token(position, {"filter": "x"})

    assert aip.decode_page_token(token, {"filter": "x"}) == position
    assert "=" not in token


def test_page_token_checks_the_kind_of_position():
    token = aip.encode_page_token(12)

    assert aip.decode_page_token(token, kind=int) == 12


def test_empty_page_token_means_the_first_page():
    assert aip.decode_page_token("", kind=int) is None


def _token(payload) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "garbage!!",
        "x",
        "%%%%",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        _token([1, 2]),
        _token("p"),
        _token({"q": {}}),
        _token({"p": "12"}),
        _token({"p": True}),
        _token({"p": 1.5}),
    ],
)
def test_forged_or_garbled_page_tokens_are_invalid_argument_on_page_token(token):
    with pytest.raises(InvalidArgument) as caught:
        aip.decode_page_token(token, kind=int)

    assert [v.field for v in caught.value.violations] == ["page_token"]
    assert caught.value.violations[0].description == "is not a token this API returned"


def test_a_token_from_another_query_is_refused():
    token = aip.encode_page_token(5, {"filter": "state=ACTIVE"})

    with pytest.raises(InvalidArgument) as caught:
        aip.decode_page_token(token, {"filter": "state=DONE"}, kind=int)

    assert caught.value.violations[0].field == "page_token"
    assert "different filters" in caught.value.violations[0].description


def test_timestamps():
    stamp = aip.timestamp_from_ns(1_500_000_000_123_456_789)

    assert (stamp.seconds, stamp.nanos) == (1_500_000_000, 123_456_789)
    assert aip.now().seconds > stamp.seconds


UPDATABLE = ("display_name", "email", "phone")


def passenger(**fields) -> pb.Passenger:
    values = {"name": "passengers/p1", "display_name": "Ada", "email": "ada@example.com", "phone": "+4411"}
    values.update(fields)
    return pb.Passenger(**values)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def test_explicit_mask_copies_only_masked_fields_and_clears_unsent_ones():
    target = passenger()
    patch = pb.Passenger(display_name="Grace", email="ignored@example.com")

    applied = aip.apply_update_mask(target, patch, mask("display_name", "phone"), UPDATABLE, "passenger")

    assert applied == ["display_name", "phone"]
    assert target.display_name == "Grace"
    assert target.email == "ada@example.com"
    assert target.phone == ""


def test_empty_mask_means_the_fields_that_were_sent():
    target = passenger()
    patch = pb.Passenger(name="passengers/p1", email="grace@example.com")

    applied = aip.apply_update_mask(target, patch, mask(), UPDATABLE, "passenger")

    assert applied == ["email"]
    assert target.email == "grace@example.com"
    assert target.display_name == "Ada"
    assert target.phone == "+4411"


def test_empty_mask_and_nothing_updatable_sent_is_invalid():
    with pytest.raises(InvalidArgument) as caught:
        aip.apply_update_mask(passenger(), pb.Passenger(name="passengers/p1"), mask(), UPDATABLE, "passenger")

    assert caught.value.violations[0].field == "passenger"


def test_star_mask_replaces_every_updatable_field():
    target = passenger()

    applied = aip.apply_update_mask(target, pb.Passenger(display_name="Grace"), mask("*"), UPDATABLE, "p")

    assert applied == ["display_name", "email", "phone"]
    assert (target.display_name, target.email, target.phone) == ("Grace", "", "")
    assert target.name == "passengers/p1"


@pytest.mark.parametrize("paths", [["name"], ["create_time"], ["display_name", "nickname"]])
def test_mask_path_outside_updatable_is_invalid_argument_on_update_mask(paths):
    target = passenger()

    with pytest.raises(InvalidArgument) as caught:
        aip.apply_update_mask(target, pb.Passenger(display_name="X"), mask(*paths), UPDATABLE, "passenger")

    assert [v.field for v in caught.value.violations] == ["update_mask"]
    assert "updatable fields: display_name, email, phone" in caught.value.violations[0].description
    assert target == passenger()


def test_message_fields_are_copied_whole_or_cleared():
    target = pb.Passenger(create_time=timestamp_pb2.Timestamp(seconds=10, nanos=5))

    aip.apply_update_mask(
        target, pb.Passenger(create_time={"seconds": 20}), mask("create_time"), ["create_time"], "p"
    )
    assert target.create_time == timestamp_pb2.Timestamp(seconds=20)

    aip.apply_update_mask(target, pb.Passenger(), mask("create_time"), ["create_time"], "p")
    assert not target.HasField("create_time")


def test_repeated_fields_are_replaced_not_appended():
    target = pb.ListPassengersResponse(passengers=[passenger(), passenger(name="passengers/p2")])
    patch = pb.ListPassengersResponse(passengers=[passenger(name="passengers/p3")])

    aip.apply_update_mask(target, patch, mask("passengers"), ["passengers"], "r")

    assert [p.name for p in target.passengers] == ["passengers/p3"]


def test_money_fields_are_copied_exactly():
    target = money_pb2.Money(currency_code="EUR", units=1, nanos=500_000_000)

    aip.apply_update_mask(target, money_pb2.Money(units=7), mask(), ["units", "nanos"], "fare")

    assert (target.currency_code, target.units, target.nanos) == ("EUR", 7, 500_000_000)


def test_output_only_fields_are_cleared_at_any_depth_and_the_request_is_left_alone():
    draft = pb.Passenger(
        name="passengers/p1", display_name="Ada", create_time=timestamp_pb2.Timestamp(seconds=9)
    )
    request = pb.CreatePassengerRequest(passenger=draft, request_id="r-1")
    listed = pb.ListPassengersResponse(passengers=[draft, draft], next_page_token="t")

    inputs = aip.without_output_only(request)

    assert inputs.passenger.display_name == "Ada"
    assert inputs.request_id == "r-1"
    assert not inputs.passenger.HasField("create_time")
    assert request.passenger.HasField("create_time"), "a copy: the request itself is unchanged"
    assert [p.HasField("create_time") for p in aip.without_output_only(listed).passengers] == [False, False]
