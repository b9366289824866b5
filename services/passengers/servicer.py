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

from services.runtime import aip

from . import domain
from .store import PassengerStore

Context = grpc.aio.ServicerContext[Any, Any]


class PassengerServicer(passengers_pb2_grpc.PassengerServiceServicer):
    """Passengers: create, read, list, update and delete profiles."""

    def __init__(self, store: PassengerStore) -> None:
        self.store = store

    async def CreatePassenger(self, request: CreatePassengerRequest, context: Context) -> Passenger:
        return self.store.create(domain.new_passenger(request.passenger), request)

    async def GetPassenger(self, request: GetPassengerRequest, context: Context) -> Passenger:
        return self.store.get(aip.resource_id(request.name, "passengers"))

    async def ListPassengers(
        self, request: ListPassengersRequest, context: Context
    ) -> ListPassengersResponse:
        after = aip.decode_page_token(request.page_token, kind=int) or 0
        passengers, last = self.store.list(after, aip.page_size(request.page_size))
        return ListPassengersResponse(
            passengers=passengers,
            next_page_token=aip.encode_page_token(last) if last is not None else "",
        )

    async def UpdatePassenger(self, request: UpdatePassengerRequest, context: Context) -> Passenger:
        passenger_id = aip.resource_id(request.passenger.name, "passengers", "passenger.name")
        return self.store.update(
            passenger_id, lambda current: domain.updated_passenger(current, request), request
        )

    async def DeletePassenger(self, request: DeletePassengerRequest, context: Context) -> Empty:
        self.store.delete(aip.resource_id(request.name, "passengers"), request)
        return Empty()
