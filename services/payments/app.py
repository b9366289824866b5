"""Wires the payment service into the mesh runtime, with the simulated processor and billing's invoices."""

from __future__ import annotations

from rideshare.payments.v1 import payments_pb2, payments_pb2_grpc

from services.runtime import Runtime, Service

from .clients import Billing
from .processor import SimulatedProcessor
from .servicer import PaymentServicer
from .store import MIGRATIONS, PaymentStore


def create(runtime: Runtime) -> Service:
    db = runtime.backend(MIGRATIONS)
    store = PaymentStore(db, SimulatedProcessor(db))
    return Service(
        descriptor=payments_pb2.DESCRIPTOR.services_by_name["PaymentService"],
        servicer=PaymentServicer(store, Billing(runtime.clients)),
        register=payments_pb2_grpc.add_PaymentServiceServicer_to_server,
    )
