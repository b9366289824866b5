"""Wires the driver service into the mesh runtime."""

from __future__ import annotations

from rideshare.drivers.v1 import drivers_pb2, drivers_pb2_grpc

from services.runtime import Runtime, Service
from services.runtime.sessions import Accounts

from .servicer import DriverServicer
from .store import MIGRATIONS, DriverStore


def create(runtime: Runtime) -> Service:
    store = DriverStore(runtime.backend(MIGRATIONS))
    accounts = Accounts.of(store, runtime.config)
    return Service(
        descriptor=drivers_pb2.DESCRIPTOR.services_by_name["DriverService"],
        servicer=DriverServicer(store, accounts),
        register=drivers_pb2_grpc.add_DriverServiceServicer_to_server,
    )
