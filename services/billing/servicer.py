"""The BillingService gRPC surface: decode, call the rules and the store, encode."""

from __future__ import annotations

from typing import Any

import grpc
from rideshare.billing.v1 import billing_pb2_grpc
from rideshare.billing.v1.billing_pb2 import (
    CreateInvoiceRequest,
    GetInvoiceRequest,
    Invoice,
    ListInvoicesRequest,
    ListInvoicesResponse,
    QuoteFareRequest,
    QuoteFareResponse,
)

from services.runtime import aip

from . import domain
from .store import InvoiceStore
from .tariff import Tariff

Context = grpc.aio.ServicerContext[Any, Any]


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    """Fare quotes from the tariff, and the invoices of completed trips."""

    def __init__(self, tariff: Tariff, store: InvoiceStore) -> None:
        self.tariff = tariff
        self.store = store

    async def QuoteFare(self, request: QuoteFareRequest, context: Context) -> QuoteFareResponse:
        return domain.quote(self.tariff, request)

    async def CreateInvoice(self, request: CreateInvoiceRequest, context: Context) -> Invoice:
        return self.store.create(domain.new_invoice(request.invoice), request)

    async def GetInvoice(self, request: GetInvoiceRequest, context: Context) -> Invoice:
        return self.store.get(aip.resource_id(request.name, "invoices"))

    async def ListInvoices(self, request: ListInvoicesRequest, context: Context) -> ListInvoicesResponse:
        query = {"passenger": request.passenger, "trip": request.trip}
        after = aip.decode_page_token(request.page_token, query, kind=int) or 0
        invoices, last = self.store.list(
            after, aip.page_size(request.page_size), passenger=request.passenger, trip=request.trip
        )
        return ListInvoicesResponse(
            invoices=invoices,
            next_page_token=aip.encode_page_token(last, query) if last is not None else "",
        )
