"""Wires the billing service into the mesh runtime; a bad tariff stops it here, at start."""

from __future__ import annotations

from rideshare.billing.v1 import billing_pb2, billing_pb2_grpc

from services.runtime import Runtime, Service

from .servicer import BillingServicer
from .store import INVOICES, MIGRATIONS, InvoiceStore
from .tariff import Tariff


def create(runtime: Runtime) -> Service:
    tariff = Tariff.from_settings(runtime.service)
    store = InvoiceStore(runtime.backend(MIGRATIONS), INVOICES)
    return Service(
        descriptor=billing_pb2.DESCRIPTOR.services_by_name["BillingService"],
        servicer=BillingServicer(tariff, store),
        register=billing_pb2_grpc.add_BillingServiceServicer_to_server,
    )
