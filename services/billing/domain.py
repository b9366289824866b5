"""The billing rules: a quote from two points, and an invoice priced the same way.

Billing never takes an amount from a caller: an invoice is priced by the
tariff from the trip's pickup and dropoff, exactly as QuoteFare priced the
trip when it was requested, so the invoice of a trip is its quoted fare as
long as the tariff has not changed in between. A second invoice for a trip
is only ever the first one again (`check_same`).
"""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.type.latlng_pb2 import LatLng
from rideshare.billing.v1.billing_pb2 import Invoice, QuoteFareRequest, QuoteFareResponse

from services.domain import geo, money
from services.runtime.aip import new_id, now
from services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument

from .tariff import Quote, Tariff

MAX_DURATION_SECONDS = 315_576_000_000
"""The largest google.protobuf.Duration (10,000 years)."""


def _price(tariff: Tariff, pickup: LatLng, dropoff: LatLng) -> Quote:
    return tariff.quote(geo.distance_meters(pickup, dropoff))


def quote(tariff: Tariff, request: QuoteFareRequest) -> QuoteFareResponse:
    """The fare from pickup to dropoff; INVALID_LOCATION naming each bad coordinate."""
    geo.check_latlng((request.pickup, "pickup"), (request.dropoff, "dropoff"))
    priced = _price(tariff, request.pickup, request.dropoff)
    return QuoteFareResponse(
        fare=money.to_money(priced.fare, priced.currency),
        distance_meters=priced.distance_meters,
        estimated_duration=Duration(seconds=priced.duration_seconds),
    )


def new_invoice(tariff: Tariff, draft: Invoice) -> Invoice:
    """A new invoice from the trip's draft, priced here: fresh name and time, amount and distance computed.

    `draft` carries no output-only field (the servicer cleared them), so
    nothing a caller says about money reaches the invoice.
    """
    violations = geo.latlng_violations(draft.pickup, "invoice.pickup")
    violations += geo.latlng_violations(draft.dropoff, "invoice.dropoff")
    if draft.HasField("duration"):
        duration = draft.duration
        if (
            duration.seconds < 0
            or duration.nanos < 0
            or duration.nanos > 999_999_999
            or duration.seconds > MAX_DURATION_SECONDS
        ):
            violations.append(
                FieldViolation(
                    "invoice.duration",
                    f"must be a valid, non-negative duration, got {duration.seconds}s {duration.nanos}ns",
                )
            )
    if violations:
        about_places = any(v.reason == geo.INVALID_LOCATION for v in violations)
        raise InvalidArgument(violations, reason=geo.INVALID_LOCATION if about_places else None)
    priced = _price(tariff, draft.pickup, draft.dropoff)
    invoice = Invoice(
        name=f"invoices/{new_id()}",
        trip=draft.trip,
        passenger=draft.passenger,
        amount=money.to_money(priced.fare, priced.currency),
        distance_meters=priced.distance_meters,
        create_time=now(),
        pickup=draft.pickup,
        dropoff=draft.dropoff,
    )
    if draft.HasField("duration"):
        invoice.duration.CopyFrom(draft.duration)
    return invoice


def check_same(existing: Invoice, wanted: Invoice) -> Invoice:
    """The trip's `existing` invoice if `wanted` is the same one; else FAILED_PRECONDITION naming how not."""
    where = {"invoice": existing.name, "trip": existing.trip}
    if existing.passenger != wanted.passenger:
        raise FailedPrecondition(
            f"{existing.trip} is already invoiced to {existing.passenger} by {existing.name}, "
            f"not to {wanted.passenger}",
            reason="INVOICE_PASSENGER_MISMATCH",
            metadata={**where, "invoiced_passenger": existing.passenger, "passenger": wanted.passenger},
        )
    if existing.amount != wanted.amount:
        invoiced, computed = money.format_money(existing.amount), money.format_money(wanted.amount)
        raise FailedPrecondition(
            f"{existing.trip} is already invoiced {invoiced} by {existing.name}; "
            f"its pickup and dropoff come to {computed}",
            reason="INVOICE_AMOUNT_MISMATCH",
            metadata={**where, "invoiced_amount": invoiced, "computed_amount": computed},
        )
    return existing
