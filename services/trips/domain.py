"""The trip rules: what a valid request is, the state machine, and the downstream keys.

A trip moves DRIVER_ASSIGNED -> ACCEPTED -> IN_PROGRESS -> COMPLETED, and
DRIVER_ASSIGNED or ACCEPTED -> CANCELLED. Every transition is a pure function
from the current trip to the next one that raises FAILED_PRECONDITION (with
the contract's reason and the current state in metadata "state") when the
trip is in the wrong state; the store applies it in one transaction.

Before DRIVER_ASSIGNED a trip is MATCHING: stored, with its id fixed, while
RequestTrip asks drivers, but never returned by GetTrip or ListTrips (see the
package docstring).
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.duration_pb2 import Duration
from rideshare.billing.v1.billing_pb2 import Invoice, QuoteFareResponse
from rideshare.payments.v1.payments_pb2 import Payment, PaymentState
from rideshare.trips.v1.trips_pb2 import RequestTripRequest, Trip, TripPaymentState, TripState

from services.domain.geo import check_latlng
from services.domain.money import format_money
from services.runtime.aip import new_id, now, timestamp_from_ns
from services.runtime.errors import FailedPrecondition, InvalidArgument

#: The internal state of a trip whose driver is still being matched; never returned.
MATCHING = TripState.TRIP_STATE_UNSPECIFIED
DRIVER_ASSIGNED = TripState.TRIP_STATE_DRIVER_ASSIGNED
ACCEPTED = TripState.TRIP_STATE_ACCEPTED
IN_PROGRESS = TripState.TRIP_STATE_IN_PROGRESS
COMPLETED = TripState.TRIP_STATE_COMPLETED
CANCELLED = TripState.TRIP_STATE_CANCELLED

NOT_CHARGED = TripPaymentState.TRIP_PAYMENT_STATE_NOT_CHARGED
PAID = TripPaymentState.TRIP_PAYMENT_STATE_SUCCEEDED
DECLINED = TripPaymentState.TRIP_PAYMENT_STATE_DECLINED

MAX_PAYMENT_METHOD = 100
MAX_CANCEL_REASON = 500


def state_name(state: TripState.ValueType) -> str:
    return TripState.Name(state)


def check_request(request: RequestTripRequest) -> None:
    """What the annotations cannot say: coordinates in range and a sane payment method token."""
    check_latlng((request.pickup, "pickup"), (request.dropoff, "dropoff"))
    method = request.payment_method
    if (
        not method.strip()
        or len(method) > MAX_PAYMENT_METHOD
        or any(c.isspace() or ord(c) < 32 for c in method)
    ):
        raise InvalidArgument.field(
            "payment_method",
            f"must be a payment method token of 1 to {MAX_PAYMENT_METHOD} characters without spaces, "
            'like "pm_card_visa"',
        )


def check_cancel_reason(reason: str) -> None:
    if len(reason) > MAX_CANCEL_REASON:
        raise InvalidArgument.field("reason", f"must be at most {MAX_CANCEL_REASON} characters")


def new_trip(request: RequestTripRequest, quote: QuoteFareResponse) -> Trip:
    """A MATCHING trip with its name fixed, before any driver is asked."""
    stamp = now()
    return Trip(
        name=f"trips/{new_id()}",
        passenger=request.passenger,
        pickup=request.pickup,
        dropoff=request.dropoff,
        state=MATCHING,
        fare=quote.fare,
        distance_meters=quote.distance_meters,
        estimated_duration=quote.estimated_duration,
        payment_method=request.payment_method,
        payment_state=NOT_CHARGED,
        create_time=stamp,
        update_time=stamp,
    )


# Downstream request_ids: derived from the trip, so repeating a whole operation
# repeats each downstream call with the same key and it takes effect once.


def release_request_id(trip: str) -> str:
    return f"{trip}:release"


def invoice_request_id(trip: str) -> str:
    return f"{trip}:invoice"


def payment_request_id(trip: str) -> str:
    return f"{trip}:payment"


def _refuse(trip: Trip, reason: str, wanted: Iterable[TripState.ValueType], verb: str) -> FailedPrecondition:
    states = " or ".join(state_name(s) for s in wanted)
    return FailedPrecondition(
        f"{trip.name} is {state_name(trip.state)}; only a trip that is {states} can be {verb}",
        reason=reason,
        metadata={"state": state_name(trip.state)},
    )


def _next(trip: Trip, state: TripState.ValueType) -> Trip:
    changed = Trip()
    changed.CopyFrom(trip)
    changed.state = state
    changed.update_time.CopyFrom(now())
    return changed


def accept(trip: Trip) -> Trip:
    if trip.state != DRIVER_ASSIGNED:
        raise _refuse(trip, "TRIP_NOT_ASSIGNED", [DRIVER_ASSIGNED], "accepted")
    return _next(trip, ACCEPTED)


def start(trip: Trip) -> Trip:
    if trip.state != ACCEPTED:
        raise _refuse(trip, "TRIP_NOT_ACCEPTED", [ACCEPTED], "started")
    started = _next(trip, IN_PROGRESS)
    started.start_time.CopyFrom(started.update_time)
    return started


def check_completable(trip: Trip) -> None:
    if trip.state != IN_PROGRESS:
        raise _refuse(trip, "TRIP_NOT_IN_PROGRESS", [IN_PROGRESS], "completed")


def complete(trip: Trip, dropoff_ns: int) -> Trip:
    """COMPLETED at the drop-off time fixed by the first attempt; only once the charge is recorded."""
    check_completable(trip)
    if not trip.invoice or not trip.payment or trip.payment_state == NOT_CHARGED:
        raise AssertionError(f"{trip.name} cannot complete before it is invoiced and charged")
    done = _next(trip, COMPLETED)
    done.end_time.CopyFrom(timestamp_from_ns(dropoff_ns))
    return done


def check_cancellable(trip: Trip) -> None:
    if trip.state not in (DRIVER_ASSIGNED, ACCEPTED):
        raise _refuse(trip, "TRIP_NOT_CANCELLABLE", [DRIVER_ASSIGNED, ACCEPTED], "cancelled")


def cancel(trip: Trip, reason: str) -> Trip:
    check_cancellable(trip)
    cancelled = _next(trip, CANCELLED)
    cancelled.cancel_reason = reason
    cancelled.end_time.CopyFrom(cancelled.update_time)
    return cancelled


def invoice_for(trip: Trip, dropoff_ns: int) -> Invoice:
    """What the trip says happened, for billing to price; one trip and drop-off time, one request."""
    duration = Duration()
    duration.FromNanoseconds(max(0, dropoff_ns - trip.start_time.ToNanoseconds()))
    return Invoice(
        trip=trip.name,
        passenger=trip.passenger,
        pickup=trip.pickup,
        dropoff=trip.dropoff,
        duration=duration,
    )


def payment_for(trip: Trip) -> Payment:
    """The charge of the trip's invoice: payments reads the amount from billing, never from us."""
    return Payment(invoice=trip.invoice, payment_method=trip.payment_method)


def invoice_mismatch(trip: Trip, invoice: Invoice) -> FailedPrecondition | None:
    """Why billing's invoice for the trip may not be adopted: another trip or passenger, or not the fare."""
    where = {"trip": trip.name, "invoice": invoice.name}
    if (invoice.trip, invoice.passenger) != (trip.name, trip.passenger):
        return FailedPrecondition(
            f"{invoice.name} is for {invoice.trip} of {invoice.passenger}, "
            f"not {trip.name} of {trip.passenger}; {trip.name} was not completed",
            reason="INVOICE_MISMATCH",
            metadata={**where, "invoice_trip": invoice.trip, "invoice_passenger": invoice.passenger},
        )
    if invoice.amount != trip.fare:
        fare, amount = format_money(trip.fare), format_money(invoice.amount)
        return FailedPrecondition(
            f"the fare of {trip.name} is {fare} but its invoice {invoice.name} is for {amount}; "
            f"{trip.name} was not completed",
            reason="INVOICE_AMOUNT_MISMATCH",
            metadata={**where, "fare": fare, "invoice_amount": amount},
        )
    return None


def payment_mismatch(trip: Trip, payment: Payment) -> FailedPrecondition | None:
    """Why the payment of the trip's invoice may not be adopted: it did not charge exactly the fare."""
    if payment.amount == trip.fare:
        return None
    fare, amount = format_money(trip.fare), format_money(payment.amount)
    return FailedPrecondition(
        f"the fare of {trip.name} is {fare} but the payment {payment.name} of its invoice is for {amount}; "
        f"{trip.name} was not completed",
        reason="PAYMENT_AMOUNT_MISMATCH",
        metadata={"trip": trip.name, "payment": payment.name, "fare": fare, "payment_amount": amount},
    )


def payment_state(payment: Payment) -> int:
    """A charge that went through (even if refunded since) is PAID; anything else DECLINED."""
    if payment.state in (PaymentState.PAYMENT_STATE_SUCCEEDED, PaymentState.PAYMENT_STATE_REFUNDED):
        return PAID
    return DECLINED
