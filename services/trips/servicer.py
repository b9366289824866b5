"""The TripService gRPC surface: decode, call the workflow or the store, encode."""

from __future__ import annotations

from typing import Any

import grpc
from rideshare.trips.v1 import trips_pb2_grpc
from rideshare.trips.v1.trips_pb2 import (
    AcceptTripRequest,
    CancelTripRequest,
    CompleteTripRequest,
    GetTripRequest,
    ListTripsRequest,
    ListTripsResponse,
    RequestTripRequest,
    StartTripRequest,
    Trip,
)

from services.runtime import aip

from .store import TripStore
from .workflow import TripWorkflow

Context = grpc.aio.ServicerContext[Any, Any]


class TripServicer(trips_pb2_grpc.TripServiceServicer):
    """Trips: request, follow through their states, read and list."""

    def __init__(self, store: TripStore, workflow: TripWorkflow) -> None:
        self.store = store
        self.workflow = workflow

    async def RequestTrip(self, request: RequestTripRequest, context: Context) -> Trip:
        return await self.workflow.request(request)

    async def GetTrip(self, request: GetTripRequest, context: Context) -> Trip:
        return self.store.get(aip.resource_id(request.name, "trips"))

    async def ListTrips(self, request: ListTripsRequest, context: Context) -> ListTripsResponse:
        query = {"passenger": request.passenger, "driver": request.driver}
        after = aip.decode_page_token(request.page_token, query, kind=int) or 0
        trips, last = self.store.page(
            request.passenger, request.driver, after, aip.page_size(request.page_size)
        )
        return ListTripsResponse(
            trips=trips, next_page_token=aip.encode_page_token(last, query) if last is not None else ""
        )

    async def AcceptTrip(self, request: AcceptTripRequest, context: Context) -> Trip:
        return await self.workflow.accept(request)

    async def StartTrip(self, request: StartTripRequest, context: Context) -> Trip:
        return await self.workflow.start(request)

    async def CompleteTrip(self, request: CompleteTripRequest, context: Context) -> Trip:
        return await self.workflow.complete(request)

    async def CancelTrip(self, request: CancelTripRequest, context: Context) -> Trip:
        return await self.workflow.cancel(request)
