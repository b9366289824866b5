"""The PaymentService gRPC surface: decode, call the rules and the store, encode."""

from __future__ import annotations

from typing import Any

import grpc
from rideshare.payments.v1 import payments_pb2_grpc
from rideshare.payments.v1.payments_pb2 import (
    CreatePaymentRequest,
    GetPaymentRequest,
    ListPaymentsRequest,
    ListPaymentsResponse,
    Payment,
    RefundPaymentRequest,
)

from services.runtime.aip import without_output_only
from services.runtime.principal import require_owner, signed_in

from . import domain
from .clients import Billing
from .store import PaymentStore

Context = grpc.aio.ServicerContext[Any, Any]


class PaymentServicer(payments_pb2_grpc.PaymentServiceServicer):
    """Payments: charge once per request, read, list, refund."""

    def __init__(self, store: PaymentStore, billing: Billing) -> None:
        self.store = store
        self.billing = billing

    async def CreatePayment(self, request: CreatePaymentRequest, context: Context) -> Payment:
        request = without_output_only(request)  # the amount is the invoice's, never the caller's
        domain.check_draft(request.payment)
        replay = await self.store.replayed(request)
        if replay is not None:  # answered before: neither billing nor the card is asked again
            return replay
        invoice = await self.billing.invoice(request.payment.invoice)
        payment, amount = domain.new_payment(request.payment, invoice)
        return await self.store.pay(payment, amount, request)

    async def GetPayment(self, request: GetPaymentRequest, context: Context) -> Payment:
        """The passenger's of its invoice (and operators'): to anyone else it does not exist."""
        who = signed_in()
        payment = await self.store.get(request.name)
        if not who.admin:
            owner = await self.billing.passenger_of(payment.invoice)
            require_owner([owner], lambda: self.store.not_found(self.store.id_of(payment.name)))
        return payment

    async def ListPayments(self, request: ListPaymentsRequest, context: Context) -> ListPaymentsResponse:
        page = await self.store.list(request, invoice=request.invoice)
        return ListPaymentsResponse(payments=page.items, next_page_token=page.next_page_token)

    async def RefundPayment(self, request: RefundPaymentRequest, context: Context) -> Payment:
        return await self.store.refund(request)
