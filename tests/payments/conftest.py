"""A mesh file with the payment service and billing; `payments` is a running PaymentService.

Payments charges what billing's invoice says, so its tests run the real
billing service beside it and make the invoices they pay there (`invoice`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.type.latlng_pb2 import LatLng
from rideshare.billing.v1 import billing_pb2
from rideshare.payments.v1 import payments_pb2_grpc

from services.payments.processor import SimulatedProcessor
from services.runtime.config import MeshConfig
from tests.billing.conftest import TARIFF, start_billing
from tests.conftest import MESH_TOML, Running, ServeFactory, with_port, write_mesh_file

PAYMENTS = """
[services.payments]
port = 0
"""
#: Alexanderplatz to the Brandenburg Gate: EUR 6.97 by the tests' tariff (docs/tariff.md).
PICKUP = LatLng(latitude=52.5219, longitude=13.4132)
DROPOFF = LatLng(latitude=52.5163, longitude=13.3777)


@pytest.fixture
def mesh_file(tmp_path: Path) -> Path:
    return write_mesh_file(tmp_path, MESH_TOML + PAYMENTS + TARIFF)


@pytest.fixture
def billing(serve: ServeFactory) -> Running:
    """The billing service the payments under test read their invoices from."""
    return start_billing(serve)


@pytest.fixture
def payments_config(mesh_config: MeshConfig, billing: Running) -> MeshConfig:
    """The mesh as payments sees it: billing on the port the running one took."""
    return with_port(mesh_config, "billing", billing.port)


def start_payments(serve: ServeFactory, config: MeshConfig, billing: Running, **options: object) -> Running:
    running = serve("payments", config=config, **options)
    running.payments = payments_pb2_grpc.PaymentServiceStub(running.channel)  # type: ignore[attr-defined]
    running.billing = billing  # type: ignore[attr-defined]
    return running


def invoice(payments: Running, trip: str = "t1", dropoff: LatLng = DROPOFF) -> str:
    """The name of billing's invoice of `trips/<trip>` (made on first use), Alexanderplatz to `dropoff`."""
    billing: Running = payments.billing  # type: ignore[attr-defined]
    draft = billing_pb2.Invoice(
        trip=f"trips/{trip}", passenger="passengers/p1", pickup=PICKUP, dropoff=dropoff
    )
    made = billing.call(billing.billing.CreateInvoice(billing_pb2.CreateInvoiceRequest(invoice=draft)))  # type: ignore[attr-defined]
    return str(made.name)


class Ledger:
    """The counts of a running service's simulated processor (its ledger is in the payment database)."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.processor = running.server.services[0].servicer.store.processor  # type: ignore[attr-defined]
        assert isinstance(self.processor, SimulatedProcessor)

    def charge_count(self) -> int:
        return self.running.call(self.processor.charge_count())

    def attempt_count(self) -> int:
        return self.running.call(self.processor.attempt_count())

    def refund_count(self) -> int:
        return self.running.call(self.processor.refund_count())

    def amounts(self) -> list[tuple[str, int, int]]:
        """(currency, units, nanos) of every charge the processor decided, oldest first."""
        rows = self.running.call(
            self.processor._db.query(
                "SELECT currency_code, amount_units, amount_nanos FROM processor_charges ORDER BY seq"
            )
        )
        return [(row["currency_code"], row["amount_units"], row["amount_nanos"]) for row in rows]


def processor(running: Running) -> Ledger:
    return Ledger(running)


@pytest.fixture
def payments(serve: ServeFactory, payments_config: MeshConfig, billing: Running) -> Running:
    """A running payment service with a fresh database, reading invoices from `billing`."""
    return start_payments(serve, payments_config, billing)
