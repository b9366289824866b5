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
    UpdatePassengerRequest,
)

from services.runtime.resources import Store

from . import domain

Context = grpc.aio.ServicerContext[Any, Any]


class PassengerServicer(passengers_pb2_grpc.PassengerServiceServicer):
    """Passengers: create, read, list, update and delete profiles."""

    def __init__(self, store: Store[Passenger]) -> None:
        self.store = store

    async def CreatePassenger(self, request: CreatePassengerRequest, context: Context) -> Passenger:
        return await self.store.create(domain.new_passenger(request.passenger), request)

    async def GetPassenger(self, request: GetPassengerRequest, context: Context) -> Passenger:
        return await self.store.get(request.name)

    async def ListPassengers(
        self, request: ListPassengersRequest, context: Context
    ) -> ListPassengersResponse:
        page = await self.store.list(request)
        return ListPassengersResponse(passengers=page.items, next_page_token=page.next_page_token)

    async def UpdatePassenger(self, request: UpdatePassengerRequest, context: Context) -> Passenger:
        return await self.store.update(
            request.passenger.name,
            lambda current: domain.updated_passenger(current, request),
            request,
            field="passenger.name",
        )

    async def DeletePassenger(self, request: DeletePassengerRequest, context: Context) -> Empty:
        await self.store.delete(request.name, request)
        return Empty()
