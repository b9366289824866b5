"""MeshError -> google.rpc.Status: what clients, grpcurl and the REST bridge decode."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status

from services.runtime import errors
from services.runtime.errors import FieldViolation, InvalidArgument, NotFound


def unpack(status):
    info, bad_request = None, None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
    return info, bad_request


def test_status_carries_code_message_and_error_info():
    error = NotFound(
        "passengers/p1 does not exist", reason="PASSENGER_NOT_FOUND", metadata={"name": "passengers/p1"}
    )

    status = error.to_status("passengers.rideshare")

    assert status.code == code_pb2.NOT_FOUND
    assert status.message == "passengers/p1 does not exist"
    info, bad_request = unpack(status)
    assert info.reason == "PASSENGER_NOT_FOUND"
    assert info.domain == "passengers.rideshare"
    assert dict(info.metadata) == {"name": "passengers/p1"}
    assert bad_request is None


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.NotFound, code_pb2.NOT_FOUND),
        (errors.AlreadyExists, code_pb2.ALREADY_EXISTS),
        (errors.FailedPrecondition, code_pb2.FAILED_PRECONDITION),
        (errors.Aborted, code_pb2.ABORTED),
        (errors.PermissionDenied, code_pb2.PERMISSION_DENIED),
        (errors.Unauthenticated, code_pb2.UNAUTHENTICATED),
        (errors.ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
        (errors.Unavailable, code_pb2.UNAVAILABLE),
        (errors.Internal, code_pb2.INTERNAL),
    ],
)
def test_each_error_has_its_canonical_code_and_a_default_reason(cls, code):
    status = cls("it went wrong").to_status("trips.rideshare")

    assert status.code == code
    info, _ = unpack(status)
    assert info.reason == code_pb2.Code.Name(code)
    assert info.domain == "trips.rideshare"


def test_invalid_argument_lists_every_field_violation():
    error = InvalidArgument(
        [
            FieldViolation("passenger.email", "'x' is not an email address"),
            FieldViolation("passenger.phone", "'1' is not an E.164 phone number", "BAD_PHONE"),
        ]
    )

    status = error.to_status("passengers.rideshare")

    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == (
        "passenger.email: 'x' is not an email address; passenger.phone: '1' is not an E.164 phone number"
    )
    info, bad_request = unpack(status)
    assert info.reason == "INVALID_ARGUMENT"
    assert [(v.field, v.description, v.reason) for v in bad_request.field_violations] == [
        ("passenger.email", "'x' is not an email address", ""),
        ("passenger.phone", "'1' is not an E.164 phone number", "BAD_PHONE"),
    ]


def test_invalid_argument_field_shorthand_keeps_the_reason():
    error = InvalidArgument.field("request_id", "was already used", reason="REQUEST_ID_REUSED")

    info, bad_request = unpack(error.to_status("passengers.rideshare"))

    assert info.reason == "REQUEST_ID_REUSED"
    assert [v.field for v in bad_request.field_violations] == ["request_id"]


def test_invalid_argument_needs_a_violation():
    with pytest.raises(ValueError, match="at least one field violation"):
        InvalidArgument([])


def test_grpc_status_round_trips_through_the_trailers():
    error = InvalidArgument.field("page_token", "is not a token this API returned")

    sent = error.to_grpc_status("passengers.rideshare")

    assert sent.code is grpc.StatusCode.INVALID_ARGUMENT
    assert sent.details == "page_token: is not a token this API returned"
    [(key, _)] = sent.trailing_metadata
    assert key == "grpc-status-details-bin"

    class Call:
        def code(self):
            return sent.code

        def details(self):
            return sent.details

        def trailing_metadata(self):
            return sent.trailing_metadata

    received = rpc_status.from_call(Call())
    assert received == error.to_status("passengers.rideshare")
    info, bad_request = unpack(received)
    assert info.domain == "passengers.rideshare"
    assert bad_request.field_violations[0].field == "page_token"


def test_status_code_name_is_readable():
    assert errors.status_code_name(5) == "NOT_FOUND"
    assert errors.status_code_name(999) == "999"


# -- what a caller sent comes back bounded ---------------------------------------------------------------

#: What a grpc client accepts in trailers by default; past it the call fails RESOURCE_EXHAUSTED.
GRPC_METADATA_LIMIT = 8192


def trailer_bytes(status: grpc.Status) -> int:
    """What the status adds to the trailers: grpc-message percent-encoded, the details base64."""
    import base64
    import urllib.parse

    message = urllib.parse.quote(status.details, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
    return len(message) + sum(len(base64.b64encode(value)) for _, value in status.trailing_metadata)


def test_an_echoed_name_is_cut_to_a_few_hundred_bytes_with_an_ellipsis():
    name = "passengers/" + "a" * 4000

    error = NotFound(f"{name} does not exist", reason="PASSENGER_NOT_FOUND", metadata={"passenger": name})

    assert len(error.message.encode()) <= errors.MAX_MESSAGE_BYTES
    assert error.message.startswith("passengers/aaa")
    assert error.message.endswith("\u2026")
    assert error.metadata["passenger"] == name[: errors.MAX_ECHO_BYTES - 3] + "\u2026"
    assert trailer_bytes(error.to_grpc_status("passengers.rideshare")) < GRPC_METADATA_LIMIT


def test_short_values_are_kept_and_long_ones_cut_between_characters():
    assert errors.clip("passengers/ada") == "passengers/ada"
    cut = errors.clip("\u00e9" * 300)  # two bytes each

    assert len(cut.encode()) <= errors.MAX_ECHO_BYTES
    assert cut == "\u00e9" * 126 + "\u2026"


def test_the_worst_error_still_fits_in_the_trailers():
    """Non-ASCII text (percent-encoded: 3 bytes a byte) and a thousand violations quoting their values."""
    violations = [FieldViolation(f"stops[{n}].name", "\u00e9" * 500 + " is not a stop") for n in range(1000)]

    error = InvalidArgument(violations, metadata={"value": "\u00e9" * 5000})
    status = error.to_status("trips.rideshare")
    _, bad_request = unpack(status)

    assert status.ByteSize() <= errors.MAX_STATUS_BYTES
    assert bad_request.field_violations[0].field == "stops[0].name"  # the first, at least
    assert trailer_bytes(error.to_grpc_status("trips.rideshare")) < GRPC_METADATA_LIMIT
