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

from services.runtime import aip

from . import domain
from .store import PaymentStore

Context = grpc.aio.ServicerContext[Any, Any]


class PaymentServicer(payments_pb2_grpc.PaymentServiceServicer):
    """Payments: charge once per request, read, list, refund."""

    def __init__(self, store: PaymentStore) -> None:
        self.store = store

    async def CreatePayment(self, request: CreatePaymentRequest, context: Context) -> Payment:
        payment, amount = domain.new_payment(request.payment)
        return self.store.create(payment, amount, request)

    async def GetPayment(self, request: GetPaymentRequest, context: Context) -> Payment:
        return self.store.get(aip.resource_id(request.name, "payments"))

    async def ListPayments(self, request: ListPaymentsRequest, context: Context) -> ListPaymentsResponse:
        query = {"invoice": request.invoice}
        after = aip.decode_page_token(request.page_token, query, kind=int) or 0
        payments, last = self.store.list(after, aip.page_size(request.page_size), invoice=request.invoice)
        return ListPaymentsResponse(
            payments=payments,
            next_page_token=aip.encode_page_token(last, query) if last is not None else "",
        )

    async def RefundPayment(self, request: RefundPaymentRequest, context: Context) -> Payment:
        return self.store.refund(aip.resource_id(request.name, "payments"), request)
