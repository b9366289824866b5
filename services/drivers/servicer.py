"""The DriverService gRPC surface: decode, call the rules and the store, encode."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty
from rideshare.drivers.v1 import drivers_pb2_grpc
from rideshare.drivers.v1.drivers_pb2 import (
    AssignTripRequest,
    CreateDriverRequest,
    DeleteDriverRequest,
    Driver,
    DriverSearchResult,
    GetDriverRequest,
    GoOfflineRequest,
    GoOnlineRequest,
    ListDriversRequest,
    ListDriversResponse,
    ReleaseTripRequest,
    SearchDriversRequest,
    SearchDriversResponse,
    UpdateDriverLocationRequest,
    UpdateDriverRequest,
)

from . import domain
from .store import DriverStore

Context = grpc.aio.ServicerContext[Any, Any]


class DriverServicer(drivers_pb2_grpc.DriverServiceServicer):
    """Drivers: profiles, going on and offline, positions, search, and trip assignment."""

    def __init__(self, store: DriverStore) -> None:
        self.store = store

    async def CreateDriver(self, request: CreateDriverRequest, context: Context) -> Driver:
        return await self.store.create(domain.new_driver(request.driver), request)

    async def GetDriver(self, request: GetDriverRequest, context: Context) -> Driver:
        return await self.store.get(request.name)

    async def ListDrivers(self, request: ListDriversRequest, context: Context) -> ListDriversResponse:
        page = await self.store.list(request)
        return ListDriversResponse(drivers=page.items, next_page_token=page.next_page_token)

    async def UpdateDriver(self, request: UpdateDriverRequest, context: Context) -> Driver:
        return await self.store.update(
            request.driver.name,
            lambda current: domain.updated_driver(current, request),
            request,
            field="driver.name",
        )

    async def DeleteDriver(self, request: DeleteDriverRequest, context: Context) -> Empty:
        await self.store.delete(request.name, request, domain.check_deletable)
        return Empty()

    async def GoOnline(self, request: GoOnlineRequest, context: Context) -> Driver:
        domain.check_location(request.location)
        return await self.store.update(
            request.name, lambda current: domain.go_online(current, request.location), request
        )

    async def GoOffline(self, request: GoOfflineRequest, context: Context) -> Driver:
        return await self.store.update(request.name, domain.go_offline, request)

    async def UpdateDriverLocation(self, request: UpdateDriverLocationRequest, context: Context) -> Driver:
        domain.check_location(request.location)
        return await self.store.update(
            request.name, lambda current: domain.update_location(current, request.location), request
        )

    async def SearchDrivers(self, request: SearchDriversRequest, context: Context) -> SearchDriversResponse:
        limit = domain.search_limits(request.location, request.radius_meters, request.page_size)
        found = await self.store.search(request.location, request.radius_meters, limit)
        return SearchDriversResponse(
            results=[DriverSearchResult(driver=driver, distance_meters=meters) for driver, meters in found]
        )

    async def AssignTrip(self, request: AssignTripRequest, context: Context) -> Driver:
        return await self.store.update(
            request.name, lambda current: domain.assign_trip(current, request.trip), request
        )

    async def ReleaseTrip(self, request: ReleaseTripRequest, context: Context) -> Driver:
        return await self.store.update(
            request.name, lambda current: domain.release_trip(current, request.trip), request
        )
