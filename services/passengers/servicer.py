"""The PassengerService gRPC surface: decode, call the rules and the store, encode."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty
from rideshare.passengers.v1 import passengers_pb2_grpc
from rideshare.passengers.v1.passengers_pb2 import (
    CreatePassengerRequest,
    DeletePassengerRequest,
    GetPassengerRequest,
    ListPassengersRequest,
    ListPassengersResponse,
    Passenger,
    Session,
    UpdatePassengerRequest,
)

from services.runtime.resources import Store
from services.runtime.sessions import AccountMethods, Accounts, hash_password

from . import domain

Context = grpc.aio.ServicerContext[Any, Any]


class PassengerServicer(AccountMethods[Passenger], passengers_pb2_grpc.PassengerServiceServicer):
    """Passengers: create, read, list, update and delete profiles; sign in."""

    session = Session
    account_field = "passenger"

    def __init__(self, store: Store[Passenger], accounts: Accounts) -> None:
        self.store = store
        self.accounts = accounts

    async def CreatePassenger(self, request: CreatePassengerRequest, context: Context) -> Passenger:
        passenger = domain.new_passenger(request.passenger)
        password = request.passenger.password
        hashed = await hash_password(password) if password else ""
        return await self.store.create(passenger, domain.without_password(request), password_hash=hashed)

    async def GetPassenger(self, request: GetPassengerRequest, context: Context) -> Passenger:
        self._mine(request.name)
        return await self.store.get(request.name)

    async def ListPassengers(
        self, request: ListPassengersRequest, context: Context
    ) -> ListPassengersResponse:
        page = await self.store.list(request)
        return ListPassengersResponse(passengers=page.items, next_page_token=page.next_page_token)

    async def UpdatePassenger(self, request: UpdatePassengerRequest, context: Context) -> Passenger:
        self._mine(request.passenger.name, "passenger.name")
        return await self.store.update(
            request.passenger.name,
            lambda current: domain.updated_passenger(current, request),
            request,
            field="passenger.name",
        )

    async def DeletePassenger(self, request: DeletePassengerRequest, context: Context) -> Empty:
        self._mine(request.name)
        await self.store.delete(request.name, request)
        await self.accounts.forget(self.store.id_of(request.name))
        return Empty()
