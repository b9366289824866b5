"""The DriverService gRPC surface: decode, call the rules and the store, encode."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty
from rideshare.drivers.v1 import drivers_pb2_grpc
from rideshare.drivers.v1.drivers_pb2 import (
    AssignNearestDriverRequest,
    BatchReleaseTripsRequest,
    BatchReleaseTripsResponse,
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
    Session,
    UpdateDriverLocationRequest,
    UpdateDriverRequest,
)

from services.runtime.aip import check_batch_size, read_mask_paths
from services.runtime.sessions import AccountMethods, Accounts, hash_password

from . import domain
from .store import DriverStore

Context = grpc.aio.ServicerContext[Any, Any]


class DriverServicer(AccountMethods[Driver], drivers_pb2_grpc.DriverServiceServicer):
    """Drivers: profiles, going on and offline, positions, search, and trip assignment; sign-in."""

    session = Session
    account_field = "driver"
    store: DriverStore

    def __init__(self, store: DriverStore, accounts: Accounts) -> None:
        self.store = store
        self.accounts = accounts

    async def CreateDriver(self, request: CreateDriverRequest, context: Context) -> Driver:
        driver = domain.new_driver(request.driver)
        password = request.driver.password
        hashed = await hash_password(password) if password else ""
        return await self.store.create(driver, domain.without_password(request), password_hash=hashed)

    async def GetDriver(self, request: GetDriverRequest, context: Context) -> Driver:
        self._mine(request.name)
        return await self.store.get(request.name)

    async def ListDrivers(self, request: ListDriversRequest, context: Context) -> ListDriversResponse:
        page = await self.store.list(request)
        return ListDriversResponse(drivers=page.items, next_page_token=page.next_page_token)

    async def UpdateDriver(self, request: UpdateDriverRequest, context: Context) -> Driver:
        self._mine(request.driver.name, "driver.name")
        return await self.store.update(
            request.driver.name,
            lambda current: domain.updated_driver(current, request),
            request,
            field="driver.name",
        )

    async def DeleteDriver(self, request: DeleteDriverRequest, context: Context) -> Empty:
        self._mine(request.name)
        await self.store.delete(request.name, request, domain.check_deletable)
        await self.accounts.forget(self.store.id_of(request.name))
        return Empty()

    async def GoOnline(self, request: GoOnlineRequest, context: Context) -> Driver:
        self._mine(request.name)
        domain.check_location(request.location)
        return await self.store.update(
            request.name, lambda current: domain.go_online(current, request.location), request
        )

    async def GoOffline(self, request: GoOfflineRequest, context: Context) -> Driver:
        self._mine(request.name)
        return await self.store.update(request.name, domain.go_offline, request)

    async def UpdateDriverLocation(self, request: UpdateDriverLocationRequest, context: Context) -> Driver:
        self._mine(request.name)
        domain.check_location(request.location)
        return await self.store.update(
            request.name, lambda current: domain.update_location(current, request.location), request
        )

    async def SearchDrivers(self, request: SearchDriversRequest, context: Context) -> SearchDriversResponse:
        limit = domain.search_limits(request.location, request.radius_meters, request.page_size)
        fields = read_mask_paths(request.read_mask, Driver)
        found = await self.store.search(request.location, request.radius_meters, limit, fields)
        return SearchDriversResponse(
            results=[DriverSearchResult(driver=driver, distance_meters=meters) for driver, meters in found]
        )

    async def AssignNearestDriver(self, request: AssignNearestDriverRequest, context: Context) -> Driver:
        domain.check_area(request.pickup, request.radius_meters, "pickup")
        return await self.store.assign_nearest(request.trip, request.pickup, request.radius_meters)

    async def ReleaseTrip(self, request: ReleaseTripRequest, context: Context) -> Driver:
        return await self.store.update(
            request.name, lambda current: domain.release_trip(current, request.trip), request
        )

    async def BatchReleaseTrips(
        self, request: BatchReleaseTripsRequest, context: Context
    ) -> BatchReleaseTripsResponse:
        check_batch_size(len(request.requests))
        return BatchReleaseTripsResponse(drivers=await self.store.release_batch(request.requests))
