"""A mesh file with the payment service; `payments` is a running PaymentService."""

from __future__ import annotations

from pathlib import Path

import pytest
from rideshare.payments.v1 import payments_pb2_grpc

from services.payments.processor import SimulatedProcessor
from tests.conftest import MESH_TOML, Running, ServeFactory, write_mesh_file

PAYMENTS = """
[services.payments]
port = 0
"""


@pytest.fixture
def mesh_file(tmp_path: Path) -> Path:
    return write_mesh_file(tmp_path, MESH_TOML + PAYMENTS)


def start_payments(serve: ServeFactory, **options: object) -> Running:
    running = serve("payments", **options)
    running.payments = payments_pb2_grpc.PaymentServiceStub(running.channel)  # type: ignore[attr-defined]
    return running


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


def processor(running: Running) -> Ledger:
    return Ledger(running)


@pytest.fixture
def payments(serve: ServeFactory) -> Running:
    """A running payment service with a fresh database."""
    return start_payments(serve)
