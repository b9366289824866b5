"""Wires the driver service into the mesh runtime."""

from __future__ import annotations

from rideshare.drivers.v1 import drivers_pb2, drivers_pb2_grpc

from services.runtime import Runtime, Service
from services.runtime.sessions import Accounts
from services.runtime.storage import SqliteBackend

from .servicer import DriverServicer
from .store import MIGRATIONS, DriverStore


def create(runtime: Runtime) -> Service:
    store = DriverStore(SqliteBackend(runtime.data_path("drivers.db"), MIGRATIONS))
    accounts = Accounts.of(store, runtime.config)
    return Service(
        descriptor=drivers_pb2.DESCRIPTOR.services_by_name["DriverService"],
        servicer=DriverServicer(store, accounts),
        register=drivers_pb2_grpc.add_DriverServiceServicer_to_server,
        on_stop=store.close,
    )
