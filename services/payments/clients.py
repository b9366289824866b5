"""The calls payments makes to other services, in one place: whose an invoice is (billing owns invoices).

A payment names its invoice, and the invoice its passenger: a passenger may
read a payment of its own invoice. The call is the mesh's own (principal.py),
made only when a signed-in user asks, with the stub made on first use so a
mesh without billing (a test of payments alone) never needs one.
"""

from __future__ import annotations

import grpc
from rideshare.billing.v1 import billing_pb2_grpc
from rideshare.billing.v1.billing_pb2 import GetInvoiceRequest

from services.runtime.client import Clients


class Billing:
    """Payments' view of the billing service."""

    def __init__(self, clients: Clients) -> None:
        self.clients = clients
        self._stub: billing_pb2_grpc.BillingServiceStub | None = None

    async def passenger_of(self, invoice: str) -> str:
        """The passenger an invoice bills; "" if there is no such invoice."""
        if self._stub is None:
            self._stub = self.clients.stub(billing_pb2_grpc.BillingServiceStub)
        try:
            found = await self._stub.GetInvoice(GetInvoiceRequest(name=invoice))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return ""
            raise
        return found.passenger
