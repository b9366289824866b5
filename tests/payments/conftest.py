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


def processor(running: Running) -> SimulatedProcessor:
    """The running service's simulated processor, whose ledger is in the payment database."""
    found = running.server.services[0].servicer.store.processor  # type: ignore[attr-defined]
    assert isinstance(found, SimulatedProcessor)
    return found


@pytest.fixture
def payments(serve: ServeFactory) -> Running:
    """A running payment service with a fresh database."""
    return start_payments(serve)
