"""The billing rules: a quote from two points, and what a valid invoice is."""

from __future__ import annotations

import math

from google.protobuf.duration_pb2 import Duration
from rideshare.billing.v1.billing_pb2 import Invoice, QuoteFareRequest, QuoteFareResponse

from services.domain import geo, money
from services.runtime.aip import new_id, now
from services.runtime.errors import FieldViolation, InvalidArgument

from .tariff import Tariff

MAX_DURATION_SECONDS = 315_576_000_000
"""The largest google.protobuf.Duration (10,000 years)."""


def quote(tariff: Tariff, request: QuoteFareRequest) -> QuoteFareResponse:
    """The fare from pickup to dropoff; INVALID_LOCATION naming each bad coordinate."""
    geo.check_latlng((request.pickup, "pickup"), (request.dropoff, "dropoff"))
    priced = tariff.quote(geo.distance_meters(request.pickup, request.dropoff))
    return QuoteFareResponse(
        fare=money.to_money(priced.fare, priced.currency),
        distance_meters=priced.distance_meters,
        estimated_duration=Duration(seconds=priced.duration_seconds),
    )


def new_invoice(draft: Invoice) -> Invoice:
    """A new invoice from the client's draft: fresh name and time, output fields ignored."""
    violations: list[FieldViolation] = []
    try:
        money.amount(draft.amount, "invoice.amount")
    except InvalidArgument as exc:
        violations.extend(exc.violations)
    if not (math.isfinite(draft.distance_meters) and draft.distance_meters >= 0):
        violations.append(
            FieldViolation(
                "invoice.distance_meters", f"must be a number of meters >= 0, got {draft.distance_meters!r}"
            )
        )
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
        about_money = any(v.reason == money.INVALID_AMOUNT for v in violations)
        raise InvalidArgument(violations, reason=money.INVALID_AMOUNT if about_money else None)
    invoice = Invoice(
        name=f"invoices/{new_id()}",
        trip=draft.trip,
        passenger=draft.passenger,
        amount=draft.amount,
        distance_meters=draft.distance_meters,
        create_time=now(),
    )
    if draft.HasField("duration"):
        invoice.duration.CopyFrom(draft.duration)
    return invoice
