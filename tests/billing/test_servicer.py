"""BillingService over a real grpc.aio channel to an in-process server."""

from __future__ import annotations

import math
import re

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.type.latlng_pb2 import LatLng
from google.type.money_pb2 import Money
from rideshare.billing.v1 import billing_pb2 as pb

from services.runtime.config import load_config
from services.runtime.errors import ConfigError
from tests.billing.conftest import TARIFF, start_billing
from tests.conftest import MESH_TOML, write_mesh_file

NAME = re.compile(r"^invoices/[0-9a-f]{32}$")
DOMAIN = "billing.rideshare"
ALEXANDERPLATZ = LatLng(latitude=52.5219, longitude=13.4132)
BRANDENBURG_GATE = LatLng(latitude=52.5163, longitude=13.3777)


def other_dir(tmp_path):
    """A directory for a second mesh file, beside the fixture's."""
    directory = tmp_path / "other"
    directory.mkdir()
    return directory


def eur(units: int, nanos: int = 0) -> Money:
    return Money(currency_code="EUR", units=units, nanos=nanos)


def draft(trip: str = "trips/t1", passenger: str = "passengers/p1", **fields) -> pb.Invoice:
    values = {"amount": eur(6, 970_000_000), "distance_meters": 2481.4, "duration": Duration(seconds=298)}
    values.update(fields)
    return pb.Invoice(trip=trip, passenger=passenger, **values)


def create(billing, invoice: pb.Invoice | None = None, request_id: str = "") -> pb.Invoice:
    request = pb.CreateInvoiceRequest(invoice=invoice or draft(), request_id=request_id)
    return billing.call(billing.billing.CreateInvoice(request))


def get(billing, name: str) -> pb.Invoice:
    return billing.call(billing.billing.GetInvoice(pb.GetInvoiceRequest(name=name)))


def list_all(billing, page_size: int, **filters) -> list[list[str]]:
    """The names on each page, following next_page_token to the end."""
    pages, token = [], ""
    while True:
        request = pb.ListInvoicesRequest(page_size=page_size, page_token=token, **filters)
        response = billing.call(billing.billing.ListInvoices(request))
        pages.append([i.name for i in response.invoices])
        token = response.next_page_token
        if not token:
            return pages


def test_quote_of_the_worked_example_in_docs(billing):
    quote = billing.call(
        billing.billing.QuoteFare(pb.QuoteFareRequest(pickup=ALEXANDERPLATZ, dropoff=BRANDENBURG_GATE))
    )

    assert quote.fare == eur(6, 970_000_000)
    assert round(quote.distance_meters, 1) == 2481.4
    assert quote.estimated_duration == Duration(seconds=298)


def test_quote_of_the_same_place_is_the_base_fare(billing):
    quote = billing.call(
        billing.billing.QuoteFare(pb.QuoteFareRequest(pickup=ALEXANDERPLATZ, dropoff=ALEXANDERPLATZ))
    )

    assert quote.fare == eur(2, 500_000_000)
    assert quote.distance_meters == 0
    assert quote.estimated_duration == Duration()


def test_quote_is_in_the_configured_currency(serve, tmp_path):
    config = load_config(
        write_mesh_file(other_dir(tmp_path), MESH_TOML + TARIFF.replace('"EUR"', '"CHF"')), env={}
    )
    billing = start_billing(serve, config=config)

    quote = billing.call(
        billing.billing.QuoteFare(pb.QuoteFareRequest(pickup=ALEXANDERPLATZ, dropoff=BRANDENBURG_GATE))
    )

    assert quote.fare.currency_code == "CHF"


def test_quote_with_bad_coordinates_names_each_one(billing):
    request = pb.QuoteFareRequest(
        pickup=LatLng(latitude=91, longitude=13.4), dropoff=LatLng(latitude=52.5, longitude=math.nan)
    )

    failure = billing.fail(billing.billing.QuoteFare(request))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "INVALID_LOCATION"
    assert failure.info.domain == DOMAIN
    assert failure.fields == ["pickup.latitude", "dropoff.longitude"]


def test_quote_needs_both_places(billing):
    failure = billing.fail(billing.billing.QuoteFare(pb.QuoteFareRequest(pickup=ALEXANDERPLATZ)))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["dropoff"]


def test_create_and_get_an_invoice(billing):
    created = create(billing)

    assert NAME.match(created.name)
    assert (created.trip, created.passenger) == ("trips/t1", "passengers/p1")
    assert created.amount == eur(6, 970_000_000)
    assert created.distance_meters == 2481.4
    assert created.duration == Duration(seconds=298)
    assert created.create_time.seconds > 0
    assert get(billing, created.name) == created


def test_server_assigns_name_and_time_ignoring_what_the_client_sent(billing):
    created = create(billing, draft(name="invoices/mine", create_time={"seconds": 1}))

    assert NAME.match(created.name)
    assert created.create_time.seconds > 1


def test_distance_and_duration_are_optional(billing):
    created = create(billing, pb.Invoice(trip="trips/t1", passenger="passengers/p1", amount=eur(0)))

    assert not created.HasField("duration")
    assert get(billing, created.name) == created


def test_a_second_invoice_for_a_trip_is_already_exists_naming_the_first(billing):
    first = create(billing)

    failure = billing.fail(billing.billing.CreateInvoice(pb.CreateInvoiceRequest(invoice=draft())))

    assert failure.code is grpc.StatusCode.ALREADY_EXISTS
    assert failure.info.reason == "INVOICE_ALREADY_EXISTS"
    assert failure.info.domain == DOMAIN
    assert failure.info.metadata["invoice"] == first.name
    assert list_all(billing, 10) == [[first.name]]


def test_create_replayed_with_the_same_request_id_returns_the_same_invoice(billing):
    first = create(billing, request_id="invoice:trips/t1")
    again = create(billing, request_id="invoice:trips/t1")

    assert again == first
    assert list_all(billing, 10) == [[first.name]]


def test_request_id_reused_for_a_different_invoice_is_refused(billing):
    create(billing, request_id="r-1")

    failure = billing.fail(
        billing.billing.CreateInvoice(pb.CreateInvoiceRequest(invoice=draft(amount=eur(7)), request_id="r-1"))
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "REQUEST_ID_REUSED"
    assert failure.fields == ["request_id"]


@pytest.mark.parametrize(
    ("amount", "fields"),
    [
        (eur(-1), ["invoice.amount"]),
        (Money(currency_code="EUR", nanos=-10_000_000), ["invoice.amount"]),
        (Money(currency_code="euro", units=5), ["invoice.amount.currency_code"]),
        (Money(units=5), ["invoice.amount.currency_code"]),
        (Money(currency_code="EUR", units=5, nanos=-1), ["invoice.amount.nanos"]),
    ],
)
def test_a_bad_amount_is_invalid_amount_naming_the_field(billing, amount, fields):
    failure = billing.fail(
        billing.billing.CreateInvoice(pb.CreateInvoiceRequest(invoice=draft(amount=amount)))
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "INVALID_AMOUNT"
    assert failure.fields == fields
    assert list_all(billing, 10) == [[]]


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"distance_meters": -1.0}, ["invoice.distance_meters"]),
        ({"distance_meters": math.inf}, ["invoice.distance_meters"]),
        ({"duration": Duration(seconds=-5)}, ["invoice.duration"]),
        ({"duration": Duration(seconds=1, nanos=-1)}, ["invoice.duration"]),
    ],
)
def test_negative_distance_or_duration_is_refused(billing, fields, bad):
    failure = billing.fail(billing.billing.CreateInvoice(pb.CreateInvoiceRequest(invoice=draft(**fields))))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == bad


@pytest.mark.parametrize(
    ("invoice", "fields"),
    [
        (None, ["invoice"]),
        (pb.Invoice(), ["invoice.trip", "invoice.passenger", "invoice.amount"]),
        (draft(trip="trip-1"), ["invoice.trip"]),
        (draft(passenger="drivers/d1"), ["invoice.passenger"]),
    ],
)
def test_incomplete_invoices_name_the_missing_fields(billing, invoice, fields):
    failure = billing.fail(billing.billing.CreateInvoice(pb.CreateInvoiceRequest(invoice=invoice)))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == fields


def test_get_of_a_missing_invoice_is_not_found(billing):
    missing = "invoices/" + "0" * 32

    failure = billing.fail(billing.billing.GetInvoice(pb.GetInvoiceRequest(name=missing)))

    assert failure.code is grpc.StatusCode.NOT_FOUND
    assert failure.info.reason == "INVOICE_NOT_FOUND"
    assert dict(failure.info.metadata) == {"name": missing}


def test_get_with_a_malformed_name_is_invalid_argument(billing):
    failure = billing.fail(billing.billing.GetInvoice(pb.GetInvoiceRequest(name="payments/1")))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["name"]


def test_list_pages_through_everything_oldest_first(billing):
    names = [create(billing, draft(trip=f"trips/t{i}")).name for i in range(7)]

    assert list_all(billing, 3) == [names[0:3], names[3:6], names[6:7]]
    assert list_all(billing, 0) == [names]


def test_list_filters_by_passenger_and_trip(billing):
    ada = [create(billing, draft(trip=f"trips/a{i}", passenger="passengers/ada")).name for i in range(3)]
    bob = create(billing, draft(trip="trips/b0", passenger="passengers/bob")).name

    assert list_all(billing, 2, passenger="passengers/ada") == [ada[0:2], ada[2:3]]
    assert list_all(billing, 2, passenger="passengers/bob") == [[bob]]
    assert list_all(billing, 2, trip="trips/a1") == [[ada[1]]]
    assert list_all(billing, 2, trip="trips/a1", passenger="passengers/bob") == [[]]
    assert list_all(billing, 2, passenger="passengers/nobody") == [[]]


def test_a_page_token_only_continues_the_same_filter(billing):
    for i in range(3):
        create(billing, draft(trip=f"trips/a{i}", passenger="passengers/ada"))
    first = billing.call(
        billing.billing.ListInvoices(pb.ListInvoicesRequest(page_size=1, passenger="passengers/ada"))
    )

    failure = billing.fail(
        billing.billing.ListInvoices(
            pb.ListInvoicesRequest(page_size=1, passenger="passengers/bob", page_token=first.next_page_token)
        )
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["page_token"]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"page_token": "not-a-token"}, "page_token"),
        ({"page_size": -1}, "page_size"),
        ({"passenger": "drivers/d1"}, "passenger"),
        ({"trip": "invoices/i1"}, "trip"),
    ],
)
def test_bad_list_requests_name_the_field(billing, request_fields, field):
    failure = billing.fail(billing.billing.ListInvoices(pb.ListInvoicesRequest(**request_fields)))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == [field]


def test_invoices_and_replays_survive_a_restart(serve, billing):
    created = create(billing, request_id="invoice:trips/t1")
    billing.stop()

    restarted = start_billing(serve)

    assert get(restarted, created.name) == created
    assert create(restarted, request_id="invoice:trips/t1") == created
    assert list_all(restarted, 10) == [[created.name]]
    failure = restarted.fail(restarted.billing.CreateInvoice(pb.CreateInvoiceRequest(invoice=draft())))
    assert failure.info.reason == "INVOICE_ALREADY_EXISTS"


def test_a_bad_tariff_stops_the_service_before_it_serves(serve, tmp_path):
    config = load_config(
        write_mesh_file(other_dir(tmp_path), MESH_TOML + TARIFF.replace('"1.20"', '"1,20"')), env={}
    )

    with pytest.raises(ConfigError) as caught:
        serve("billing", config=config)

    assert caught.value.key == "services.billing.settings.per_km"
