"""Every call the payment service makes to another service: billing's invoices.

The amount of a payment is its invoice's, so billing is asked for the invoice
before anything is charged; and a payment belongs to its invoice's passenger,
so billing also says whose a payment is when a signed-in user reads one. The
calls are the mesh's own (principal.py). Their failures mean, for a payment:

- billing cannot be reached: UNAVAILABLE naming it, and nothing was charged,
  so the caller repeats the call with the same request_id;
- the invoice does not exist: NOT_FOUND INVOICE_NOT_FOUND, in our own words;
- anything else propagates and ends as INTERNAL: a bug here or there.

The stub is made on first use, so a payments service alone (its tests) needs no billing.
"""

from __future__ import annotations

import grpc
from rideshare.billing.v1 import billing_pb2_grpc
from rideshare.billing.v1.billing_pb2 import GetInvoiceRequest, Invoice

from services.runtime.client import Clients
from services.runtime.downstream import failed_with, reaching
from services.runtime.errors import NotFound


class Billing:
    """The billing service, as payments needs it."""

    def __init__(self, clients: Clients) -> None:
        self.clients = clients

    async def invoice(self, name: str) -> Invoice:
        """The invoice to charge, as billing keeps it."""
        stub = self.clients.stub(billing_pb2_grpc.BillingServiceStub)  # kept by Clients, per class
        with reaching("billing"):
            try:
                invoice: Invoice = await stub.GetInvoice(GetInvoiceRequest(name=name))
            except grpc.aio.AioRpcError as error:
                if failed_with(error, grpc.StatusCode.NOT_FOUND):
                    raise NotFound(
                        f"{name} does not exist", reason="INVOICE_NOT_FOUND", metadata={"invoice": name}
                    ) from None
                raise
        return invoice

    async def passenger_of(self, invoice: str) -> str:
        """The passenger an invoice bills; "" if there is no such invoice."""
        try:
            return (await self.invoice(invoice)).passenger
        except NotFound:
            return ""
