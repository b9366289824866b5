"""A mesh file with the billing service and its tariff; `billing` is a running BillingService."""

from __future__ import annotations

from pathlib import Path

import pytest
from rideshare.billing.v1 import billing_pb2_grpc

from tests.conftest import MESH_TOML, Running, ServeFactory, write_mesh_file

TARIFF = """
[services.billing]
port = 0

[services.billing.settings]
currency = "EUR"
base_fare = "2.50"
per_km = "1.20"
per_minute = "0.30"
average_speed_kmh = 30
"""


@pytest.fixture
def mesh_file(tmp_path: Path) -> Path:
    return write_mesh_file(tmp_path, MESH_TOML + TARIFF)


def start_billing(serve: ServeFactory, **options: object) -> Running:
    running = serve("billing", **options)
    running.billing = billing_pb2_grpc.BillingServiceStub(running.channel)  # type: ignore[attr-defined]
    return running


@pytest.fixture
def billing(serve: ServeFactory) -> Running:
    """A running billing service with a fresh database."""
    return start_billing(serve)
