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

from services.runtime import aip

from . import domain
from .store import DriverStore

Context = grpc.aio.ServicerContext[Any, Any]


class DriverServicer(drivers_pb2_grpc.DriverServiceServicer):
    """Drivers: profiles, going on and offline, positions, search, and trip assignment."""

    def __init__(self, store: DriverStore) -> None:
        self.store = store

    async def CreateDriver(self, request: CreateDriverRequest, context: Context) -> Driver:
        return self.store.create(domain.new_driver(request.driver), request)

    async def GetDriver(self, request: GetDriverRequest, context: Context) -> Driver:
        return self.store.get(aip.resource_id(request.name, "drivers"))

    async def ListDrivers(self, request: ListDriversRequest, context: Context) -> ListDriversResponse:
        after = aip.decode_page_token(request.page_token, kind=int) or 0
        drivers, last = self.store.list(after, aip.page_size(request.page_size))
        return ListDriversResponse(
            drivers=drivers, next_page_token=aip.encode_page_token(last) if last is not None else ""
        )

    async def UpdateDriver(self, request: UpdateDriverRequest, context: Context) -> Driver:
        driver_id = aip.resource_id(request.driver.name, "drivers", "driver.name")
        return self.store.change(
            driver_id, lambda current: domain.updated_driver(current, request), "UpdateDriver", request
        )

    async def DeleteDriver(self, request: DeleteDriverRequest, context: Context) -> Empty:
        self.store.delete(aip.resource_id(request.name, "drivers"), domain.check_deletable, request)
        return Empty()

    async def GoOnline(self, request: GoOnlineRequest, context: Context) -> Driver:
        domain.check_location(request.location)
        return self.store.change(
            aip.resource_id(request.name, "drivers"),
            lambda current: domain.go_online(current, request.location),
            "GoOnline",
            request,
        )

    async def GoOffline(self, request: GoOfflineRequest, context: Context) -> Driver:
        return self.store.change(
            aip.resource_id(request.name, "drivers"), domain.go_offline, "GoOffline", request
        )

    async def UpdateDriverLocation(self, request: UpdateDriverLocationRequest, context: Context) -> Driver:
        domain.check_location(request.location)
        return self.store.change(
            aip.resource_id(request.name, "drivers"),
            lambda current: domain.update_location(current, request.location),
            "UpdateDriverLocation",
            request,
        )

    async def SearchDrivers(self, request: SearchDriversRequest, context: Context) -> SearchDriversResponse:
        limit = domain.search_limits(request.location, request.radius_meters, request.page_size)
        found = self.store.search(request.location, request.radius_meters, limit)
        return SearchDriversResponse(
            results=[DriverSearchResult(driver=driver, distance_meters=meters) for driver, meters in found]
        )

    async def AssignTrip(self, request: AssignTripRequest, context: Context) -> Driver:
        return self.store.change(
            aip.resource_id(request.name, "drivers"),
            lambda current: domain.assign_trip(current, request.trip),
            "AssignTrip",
            request,
        )

    async def ReleaseTrip(self, request: ReleaseTripRequest, context: Context) -> Driver:
        return self.store.change(
            aip.resource_id(request.name, "drivers"),
            lambda current: domain.release_trip(current, request.trip),
            "ReleaseTrip",
            request,
        )
