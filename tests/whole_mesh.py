"""The whole mesh in one process: all six services on free ports, one mesh file, one data dir.

Each service runs from its own `create_server(config, name, port=...)` on
the test's event loop, exactly as `mesh serve` builds it, so trips reaches
the others over real gRPC through the mesh file. A service can be stopped
and started again on the same port and data dir to stage an outage. With a
`[storage]` table the services keep their data there (a database per service
on PostgreSQL, made here as `mesh up` makes them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from rideshare.billing.v1 import billing_pb2_grpc
from rideshare.drivers.v1 import drivers_pb2_grpc
from rideshare.notifications.v1 import notifications_pb2_grpc
from rideshare.passengers.v1 import passengers_pb2_grpc
from rideshare.payments.v1 import payments_pb2_grpc
from rideshare.trips.v1 import trips_pb2_grpc

from services.mesh.migrate import ensure_databases
from services.runtime.config import load_config
from services.runtime.server import MeshServer, create_server
from tests.conftest import Loop
from tests.ports import free_ports

T = TypeVar("T")

#: Start order: trips last, so its neighbours are up when it first calls them.
SERVICES = ("passengers", "drivers", "billing", "payments", "notifications", "trips")
#: A bound on waiting for something that must happen (a delivery after a restart), not a speed check.
PATIENCE = 60.0

SETTINGS = """
[services.billing.settings]
currency = "EUR"
base_fare = "2.50"
per_km = "1.20"
per_minute = "0.30"
average_speed_kmh = 30

[services.trips.settings]
search_radius_meters = 5000
matching_timeout_seconds = 60
outbox_max_backoff_seconds = 0.5
"""


def mesh_text(ports: dict[str, int], storage: str = "") -> str:
    """The mesh file; no drain period, since every stop here is a test's outage or its teardown."""
    services = "".join(f"\n[services.{name}]\nport = {port}\n" for name, port in ports.items())
    return (
        'host = "127.0.0.1"\ndata_dir = "data"\ngrace_period = "1s"\ndrain_period = "0s"\n'
        'log_level = "warning"\n\n'
        '[client]\ntimeout = "10s"\n' + services + SETTINGS + storage
    )


class Mesh(Loop):
    """The running services, stubs to each, and ways to stop and restart one."""

    def __init__(self, runner: asyncio.Runner, directory: Path, storage: str = "") -> None:
        """`storage`: a `[storage]` table for the mesh file (SQLite files without one)."""
        super().__init__(runner)
        self.ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
        path = directory / "mesh.toml"
        path.write_text(mesh_text(self.ports, storage), encoding="utf-8")
        self.config = load_config(path, env={})
        ensure_databases(self.config, list(self.config.services.values()))
        self.servers: dict[str, MeshServer] = {}
        self.channels = {name: self.call(_channel(port)) for name, port in self.ports.items()}
        self.passengers = passengers_pb2_grpc.PassengerServiceStub(self.channels["passengers"])
        self.drivers = drivers_pb2_grpc.DriverServiceStub(self.channels["drivers"])
        self.billing = billing_pb2_grpc.BillingServiceStub(self.channels["billing"])
        self.payments = payments_pb2_grpc.PaymentServiceStub(self.channels["payments"])
        self.notifications = notifications_pb2_grpc.NotificationServiceStub(self.channels["notifications"])
        self.trips = trips_pb2_grpc.TripServiceStub(self.channels["trips"])

    def start(self, *names: str) -> None:
        for name in names or SERVICES:
            server = self.call(create_server(self.config, name, port=self.ports[name]))
            self.call(server.start())
            self.servers[name] = server

    def stop(self, name: str) -> None:
        server = self.servers.pop(name)
        self.call(server.stop(0))

    def close(self) -> None:
        for name in reversed(SERVICES):
            if name in self.servers:
                self.stop(name)
        for channel in self.channels.values():
            self.call(channel.close())

    def eventually(self, check: Callable[[], Awaitable[T]], what: str) -> T:
        """Repeat `check` (on the loop, so background tasks run) until it returns something truthy."""

        async def poll() -> T:
            deadline = time.monotonic() + PATIENCE
            while True:
                result = await check()
                if result:
                    return result
                if time.monotonic() > deadline:
                    raise AssertionError(f"gave up waiting for {what}")
                await asyncio.sleep(0.05)

        return self.call(poll())

    def retry_unavailable(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """What a client does with UNAVAILABLE: repeat the same call until the service is back."""

        async def attempt() -> Any:
            try:
                return (await call(),)
            except grpc.aio.AioRpcError as error:
                if error.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                return None

        result: tuple[T] = self.eventually(attempt, what)
        return result[0]


async def _channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}")
