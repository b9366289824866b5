"""The payment rules: what a valid payment is, what a processor outcome means, when a refund is allowed.

A payment charges exactly its invoice's amount, as billing keeps it: the
amount is never the caller's.
"""

from __future__ import annotations

from decimal import Decimal

from rideshare.billing.v1.billing_pb2 import Invoice
from rideshare.payments.v1.payments_pb2 import Payment, PaymentState

from services.domain import money
from services.runtime.aip import new_id, now
from services.runtime.errors import FailedPrecondition, InvalidArgument

from .processor import Charge, Outcome

MAX_PAYMENT_METHOD = 255


def check_draft(draft: Payment) -> None:
    """What a caller may say about a payment, checked before billing is asked: a sane method token."""
    method = draft.payment_method
    if len(method) > MAX_PAYMENT_METHOD or not method.isprintable() or any(c.isspace() for c in method):
        raise InvalidArgument.field(
            "payment.payment_method",
            f"must be a token like 'pm_card_visa': at most {MAX_PAYMENT_METHOD} printable characters, "
            "no spaces",
        )


def new_payment(draft: Payment, invoice: Invoice) -> tuple[Payment, Decimal]:
    """A new, not yet charged payment of exactly the invoice's amount, and that amount.

    `draft` carries no output-only field (the servicer cleared them): the
    amount comes from billing's invoice and nowhere else.
    """
    amount = money.to_decimal(invoice.amount)  # billing's own Money; a malformed one is a bug (INTERNAL)
    stamp = now()
    payment = Payment(
        name=f"payments/{new_id()}",
        invoice=draft.invoice,
        amount=invoice.amount,
        payment_method=draft.payment_method,
        create_time=stamp,
        update_time=stamp,
    )
    return payment, amount


def charge_for(payment: Payment, amount: Decimal, request_id: str) -> Charge:
    """The processor charge of a payment; the request_id is the processor's idempotency key too."""
    return Charge(
        idempotency_key=request_id or payment.name,
        payment_method=payment.payment_method,
        amount=amount,
        currency_code=payment.amount.currency_code,
    )


def settled(payment: Payment, outcome: Outcome) -> Payment:
    """The payment with the processor's outcome: SUCCEEDED, or DECLINED with the reason."""
    result = Payment()
    result.CopyFrom(payment)
    if outcome.succeeded:
        result.state = PaymentState.PAYMENT_STATE_SUCCEEDED
        result.decline_reason = ""
    else:
        result.state = PaymentState.PAYMENT_STATE_DECLINED
        result.decline_reason = outcome.decline_reason
    return result


def already_paid(invoice: str, payment_name: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"{invoice} is already paid by {payment_name}",
        reason="INVOICE_ALREADY_PAID",
        metadata={"payment": payment_name, "invoice": invoice},
    )


def refunded(payment: Payment) -> Payment:
    """The payment given back in full; only a SUCCEEDED payment can be refunded."""
    if payment.state == PaymentState.PAYMENT_STATE_REFUNDED:
        raise FailedPrecondition(
            f"{payment.name} is already refunded",
            reason="PAYMENT_ALREADY_REFUNDED",
            metadata={"name": payment.name},
        )
    if payment.state != PaymentState.PAYMENT_STATE_SUCCEEDED:
        state = PaymentState.Name(payment.state)
        raise FailedPrecondition(
            f"{payment.name} is {state}; only a SUCCEEDED payment can be refunded",
            reason="PAYMENT_NOT_SUCCEEDED",
            metadata={"name": payment.name, "state": state},
        )
    result = Payment()
    result.CopyFrom(payment)
    result.state = PaymentState.PAYMENT_STATE_REFUNDED
    result.update_time.CopyFrom(now())
    return result
