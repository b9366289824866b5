"""The TripService gRPC surface: decode, check whose trip it is, call the workflow or the store, encode.

A trip belongs to its passenger and its driver (and operators see every
trip). Anyone else gets the NOT_FOUND of a missing trip, and a RequestTrip for
another passenger the NOT_FOUND of a missing passenger: nothing tells them the
trip or passenger exists. The steps a driver takes (accept, start, complete)
are the driver's alone; its passenger sees the trip, so is told PERMISSION_DENIED.
The workflow's own calls to other services are the mesh's (principal.py).
"""

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

from services.runtime.context import Principal
from services.runtime.errors import NotFound, PermissionDenied
from services.runtime.principal import require_owner, signed_in

from .store import TripStore
from .workflow import Allowed, TripWorkflow

Context = grpc.aio.ServicerContext[Any, Any]


class TripServicer(trips_pb2_grpc.TripServiceServicer):
    """Trips: request, follow through their states, read and list."""

    def __init__(self, store: TripStore, workflow: TripWorkflow) -> None:
        self.store = store
        self.workflow = workflow

    async def RequestTrip(self, request: RequestTripRequest, context: Context) -> Trip:
        require_owner([request.passenger], lambda: passenger_not_found(request.passenger))
        return await self.workflow.request(request)

    async def GetTrip(self, request: GetTripRequest, context: Context) -> Trip:
        who = signed_in()
        trip = await self.store.get(request.name)
        self._check(who, trip)
        return trip

    async def ListTrips(self, request: ListTripsRequest, context: Context) -> ListTripsResponse:
        passenger, driver = request.passenger, request.driver
        who = signed_in()
        if not who.admin:
            mine = who.user.startswith("passengers/")
            asked = passenger if mine else driver
            if asked and asked != who.user:
                return ListTripsResponse()  # someone else's trips: none of them are the caller's
            passenger, driver = (who.user, driver) if mine else (passenger, who.user)
        page = await self.store.list(request, passenger=passenger, driver=driver)
        return ListTripsResponse(trips=page.items, next_page_token=page.next_page_token)

    async def AcceptTrip(self, request: AcceptTripRequest, context: Context) -> Trip:
        return await self.workflow.accept(request, self._allowed("accept"))

    async def StartTrip(self, request: StartTripRequest, context: Context) -> Trip:
        return await self.workflow.start(request, self._allowed("start"))

    async def CompleteTrip(self, request: CompleteTripRequest, context: Context) -> Trip:
        return await self.workflow.complete(request, self._allowed("complete"))

    async def CancelTrip(self, request: CancelTripRequest, context: Context) -> Trip:
        return await self.workflow.cancel(request, self._allowed())

    def _allowed(self, drivers_step: str = "") -> Allowed:
        """Whether the caller may act on a trip (and take `drivers_step` on it): its NOT_FOUND if not.

        The step checks it on the trip it holds, before anything else (a repeat's stored answer
        included), so the trip is read once.
        """
        who = signed_in()
        return lambda trip: self._check(who, trip, drivers_step)

    def _check(self, who: Principal, trip: Trip, drivers_step: str = "") -> None:
        if who.admin:
            return
        if who.user not in (trip.passenger, trip.driver):
            raise self.store.not_found(self.store.id_of(trip.name))
        if drivers_step and who.user != trip.driver:
            raise PermissionDenied(
                f"only the trip's driver may {drivers_step} it", reason="NOT_THE_TRIPS_DRIVER"
            )


def passenger_not_found(name: str) -> NotFound:
    """What RequestTrip answers for a passenger that does not exist (clients.py), and for another's."""
    return NotFound(f"{name} does not exist", reason="PASSENGER_NOT_FOUND", metadata={"passenger": name})
