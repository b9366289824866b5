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
        return await self.store.get(request.name)

    async def ListTrips(self, request: ListTripsRequest, context: Context) -> ListTripsResponse:
        page = await self.store.list(request, passenger=request.passenger, driver=request.driver)
        return ListTripsResponse(trips=page.items, next_page_token=page.next_page_token)

    async def AcceptTrip(self, request: AcceptTripRequest, context: Context) -> Trip:
        return await self.workflow.accept(request)

    async def StartTrip(self, request: StartTripRequest, context: Context) -> Trip:
        return await self.workflow.start(request)

    async def CompleteTrip(self, request: CompleteTripRequest, context: Context) -> Trip:
        return await self.workflow.complete(request)

    async def CancelTrip(self, request: CancelTripRequest, context: Context) -> Trip:
        return await self.workflow.cancel(request)
