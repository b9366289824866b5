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

from services.billing.store import MIGRATIONS, _trip_invoiced
from services.runtime.config import load_config
from services.runtime.errors import AlreadyExists, ConfigError, FailedPrecondition
from services.runtime.storage import SqliteBackend
from tests.billing.conftest import TARIFF, start_billing
from tests.conftest import MESH_TOML, write_mesh_file
from tests.contracts import settable

NAME = re.compile(r"^invoices/[0-9a-f]{32}$")
DOMAIN = "billing.rideshare"
ALEXANDERPLATZ = LatLng(latitude=52.5219, longitude=13.4132)
BRANDENBURG_GATE = LatLng(latitude=52.5163, longitude=13.3777)
#: Fernsehturm, a few hundred meters from Alexanderplatz: a much cheaper ride.
TV_TOWER = LatLng(latitude=52.5208, longitude=13.4094)
#: What the tariff makes of Alexanderplatz -> Brandenburg Gate (docs/tariff.md).
FARE = Money(currency_code="EUR", units=6, nanos=970_000_000)


def other_dir(tmp_path):
    """A directory for a second mesh file, beside the fixture's."""
    directory = tmp_path / "other"
    directory.mkdir()
    return directory


def eur(units: int, nanos: int = 0) -> Money:
    return Money(currency_code="EUR", units=units, nanos=nanos)


def draft(trip: str = "trips/t1", passenger: str = "passengers/p1", **fields) -> pb.Invoice:
    """What trips sends: the trip, its passenger, where it went and how long it took; never an amount."""
    values = {"pickup": ALEXANDERPLATZ, "dropoff": BRANDENBURG_GATE, "duration": Duration(seconds=298)}
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


def test_create_and_get_an_invoice_priced_like_the_quote(billing):
    created = create(billing)
    quote = billing.call(
        billing.billing.QuoteFare(pb.QuoteFareRequest(pickup=ALEXANDERPLATZ, dropoff=BRANDENBURG_GATE))
    )

    assert NAME.match(created.name)
    assert (created.trip, created.passenger) == ("trips/t1", "passengers/p1")
    assert (created.pickup, created.dropoff) == (ALEXANDERPLATZ, BRANDENBURG_GATE)
    assert created.amount == FARE == quote.fare
    assert created.distance_meters == quote.distance_meters
    assert created.duration == Duration(seconds=298)
    assert created.create_time.seconds > 0
    assert get(billing, created.name) == created


def test_the_create_request_has_no_field_for_an_amount():
    """The contract: what a caller may set to invoice a trip; the amount and distance are output only."""
    assert settable(pb.CreateInvoiceRequest.DESCRIPTOR) == {
        "invoice.trip": "string",
        "invoice.passenger": "string",
        "invoice.duration": "google.protobuf.Duration",
        "invoice.pickup": "google.type.LatLng",
        "invoice.dropoff": "google.type.LatLng",
        "request_id": "string",
    }


@pytest.mark.parametrize(
    "amount",
    [
        eur(0, 10_000_000),
        eur(-1),
        Money(currency_code="euro", units=5),
        Money(currency_code="EUR", units=5, nanos=-1),
    ],
)
def test_an_amount_sent_by_the_caller_is_ignored(billing, amount):
    created = create(billing, draft(amount=amount, distance_meters=1.0))

    assert created.amount == FARE
    assert created.distance_meters == pytest.approx(2481.397, abs=0.001)
    assert get(billing, created.name).amount == FARE


def test_the_amount_is_in_the_billing_tariff_currency(serve, tmp_path):
    config = load_config(
        write_mesh_file(other_dir(tmp_path), MESH_TOML + TARIFF.replace('"EUR"', '"CHF"')), env={}
    )
    billing = start_billing(serve, config=config)

    created = create(billing, draft(amount=eur(6, 970_000_000)))

    assert created.amount == Money(currency_code="CHF", units=6, nanos=970_000_000)


def test_server_assigns_name_and_time_ignoring_what_the_client_sent(billing):
    created = create(billing, draft(name="invoices/mine", create_time={"seconds": 1}))

    assert NAME.match(created.name)
    assert created.create_time.seconds > 1


def test_the_duration_is_optional(billing):
    created = create(billing, draft(duration=None))

    assert not created.HasField("duration")
    assert created.amount == FARE, "the fare does not depend on how long the trip took"
    assert get(billing, created.name) == created


def test_a_second_invoice_for_a_trip_that_is_the_same_returns_the_first(billing):
    first = create(billing)

    again = create(billing, draft(duration=Duration(seconds=400)), request_id="another-key")

    assert again == first
    assert list_all(billing, 10) == [[first.name]]


def test_a_trip_invoiced_for_another_amount_is_failed_precondition_naming_both(billing):
    """Issue 11's finding: a cheap invoice made first for a dearer trip is never that trip's invoice."""
    cheap = create(billing, draft(dropoff=TV_TOWER))

    failure = billing.fail(billing.billing.CreateInvoice(pb.CreateInvoiceRequest(invoice=draft())))

    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.info.reason == "INVOICE_AMOUNT_MISMATCH"
    assert failure.info.domain == DOMAIN
    assert dict(failure.info.metadata) == {
        "invoice": cheap.name,
        "trip": "trips/t1",
        "invoiced_amount": f"EUR {cheap.amount.units}.{cheap.amount.nanos // 10_000_000:02d}",
        "computed_amount": "EUR 6.97",
    }
    assert "EUR 6.97" in failure.message
    assert list_all(billing, 10) == [[cheap.name]]


def test_a_trip_invoiced_to_another_passenger_is_failed_precondition_naming_both(billing):
    first = create(billing, draft(passenger="passengers/p2"))

    failure = billing.fail(billing.billing.CreateInvoice(pb.CreateInvoiceRequest(invoice=draft())))

    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.info.reason == "INVOICE_PASSENGER_MISMATCH"
    assert dict(failure.info.metadata) == {
        "invoice": first.name,
        "trip": "trips/t1",
        "invoiced_passenger": "passengers/p2",
        "passenger": "passengers/p1",
    }


def test_a_create_that_lost_a_race_for_the_trip_names_the_winner_or_how_it_differs():
    """Where the engine lets two creates both look first, the unique column decides; the loser is told."""
    winner = pb.Invoice(name="invoices/w", trip="trips/t1", passenger="passengers/p1", amount=FARE)
    same = pb.Invoice(name="invoices/l", trip="trips/t1", passenger="passengers/p1", amount=FARE)
    dearer = pb.Invoice(name="invoices/l", trip="trips/t1", passenger="passengers/p1", amount=eur(9))

    lost = _trip_invoiced(same, winner)
    differs = _trip_invoiced(dearer, winner)

    assert isinstance(lost, AlreadyExists)
    assert (lost.reason, lost.metadata["invoice"]) == ("INVOICE_ALREADY_EXISTS", "invoices/w")
    assert isinstance(differs, FailedPrecondition)
    assert differs.reason == "INVOICE_AMOUNT_MISMATCH"


def test_create_replayed_with_the_same_request_id_returns_the_same_invoice(billing):
    first = create(billing, request_id="invoice:trips/t1")
    again = create(billing, request_id="invoice:trips/t1")

    assert again == first
    assert list_all(billing, 10) == [[first.name]]


def test_request_id_reused_for_a_different_invoice_is_refused(billing):
    create(billing, request_id="r-1")

    failure = billing.fail(
        billing.billing.CreateInvoice(
            pb.CreateInvoiceRequest(invoice=draft(dropoff=TV_TOWER), request_id="r-1")
        )
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "REQUEST_ID_REUSED"
    assert failure.fields == ["request_id"]


def test_a_repeat_that_differs_only_in_an_ignored_amount_is_the_same_request(billing):
    first = create(billing, request_id="r-1")

    again = create(billing, draft(amount=eur(0, 10_000_000)), request_id="r-1")

    assert again == first


@pytest.mark.parametrize(
    ("fields", "bad", "reason"),
    [
        ({"duration": Duration(seconds=-5)}, ["invoice.duration"], "INVALID_ARGUMENT"),
        ({"duration": Duration(seconds=1, nanos=-1)}, ["invoice.duration"], "INVALID_ARGUMENT"),
        ({"pickup": LatLng(latitude=91, longitude=13.4)}, ["invoice.pickup.latitude"], "INVALID_LOCATION"),
        (
            {"dropoff": LatLng(latitude=52.5, longitude=math.nan), "duration": Duration(seconds=-1)},
            ["invoice.dropoff.longitude", "invoice.duration"],
            "INVALID_LOCATION",
        ),
    ],
)
def test_bad_places_or_a_negative_duration_are_refused_naming_each(billing, fields, bad, reason):
    failure = billing.fail(billing.billing.CreateInvoice(pb.CreateInvoiceRequest(invoice=draft(**fields))))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == reason
    assert failure.fields == bad
    assert list_all(billing, 10) == [[]]


@pytest.mark.parametrize(
    ("invoice", "fields"),
    [
        (None, ["invoice"]),
        (pb.Invoice(), ["invoice.trip", "invoice.passenger", "invoice.pickup", "invoice.dropoff"]),
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
    assert create(restarted) == created, "the trip's invoice, found again"
    failure = restarted.fail(
        restarted.billing.CreateInvoice(pb.CreateInvoiceRequest(invoice=draft(dropoff=TV_TOWER)))
    )
    assert failure.info.reason == "INVOICE_AMOUNT_MISMATCH"


def test_invoices_recorded_before_billing_priced_them_still_read(serve, loop, mesh_config):
    """A billing.db of the first schema opens: its invoices read as before, without places."""
    path = mesh_config.data_dir / "billing" / "billing.db"
    path.parent.mkdir(parents=True)
    old = SqliteBackend(path, [(MIGRATIONS / "0001_init.sql").read_text()])  # the first schema only

    async def write_an_old_invoice() -> None:
        async with old.transaction() as tx:
            await tx.execute(
                "INSERT INTO invoices (id, trip, passenger, currency_code, amount_units, amount_nanos, "
                "distance_meters, duration_seconds, duration_nanos, create_time) "
                "VALUES ('old', 'trips/t1', 'passengers/p1', 'EUR', 0, 10000000, 0, NULL, NULL, 1)"
            )
        await old.close()

    loop.call(write_an_old_invoice())
    billing = start_billing(serve)

    invoice = get(billing, "invoices/old")
    assert (invoice.trip, invoice.amount) == ("trips/t1", eur(0, 10_000_000))
    assert not invoice.HasField("pickup")
    assert not invoice.HasField("dropoff")
    failure = billing.fail(billing.billing.CreateInvoice(pb.CreateInvoiceRequest(invoice=draft())))
    assert failure.info.reason == "INVOICE_AMOUNT_MISMATCH"


def test_a_bad_tariff_stops_the_service_before_it_serves(serve, tmp_path):
    config = load_config(
        write_mesh_file(other_dir(tmp_path), MESH_TOML + TARIFF.replace('"1.20"', '"1,20"')), env={}
    )

    with pytest.raises(ConfigError) as caught:
        serve("billing", config=config)

    assert caught.value.key == "services.billing.settings.per_km"
