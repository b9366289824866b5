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

from services.runtime.aip import without_output_only
from services.runtime.principal import require_owner, signed_in

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
        request = without_output_only(request)  # the amount and distance are computed, never taken
        return await self.store.invoice_trip(domain.new_invoice(self.tariff, request.invoice), request)

    async def GetInvoice(self, request: GetInvoiceRequest, context: Context) -> Invoice:
        """Its passenger's (and operators'): to anyone else it does not exist."""
        signed_in()
        invoice = await self.store.get(request.name)
        require_owner([invoice.passenger], lambda: self.store.not_found(self.store.id_of(invoice.name)))
        return invoice

    async def ListInvoices(self, request: ListInvoicesRequest, context: Context) -> ListInvoicesResponse:
        page = await self.store.list(request, passenger=request.passenger, trip=request.trip)
        return ListInvoicesResponse(invoices=page.items, next_page_token=page.next_page_token)
