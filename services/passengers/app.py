"""Wires the passenger service into the mesh runtime."""

from __future__ import annotations

from rideshare.passengers.v1 import passengers_pb2, passengers_pb2_grpc

from services.runtime import Runtime, Service
from services.runtime.resources import Store
from services.runtime.sessions import Accounts

from .servicer import PassengerServicer
from .store import MIGRATIONS, PASSENGERS


def create(runtime: Runtime) -> Service:
    store = Store(runtime.backend(MIGRATIONS), PASSENGERS)
    accounts = Accounts.of(store, runtime.config)
    return Service(
        descriptor=passengers_pb2.DESCRIPTOR.services_by_name["PassengerService"],
        servicer=PassengerServicer(store, accounts),
        register=passengers_pb2_grpc.add_PassengerServiceServicer_to_server,
    )
