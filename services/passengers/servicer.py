"""The PassengerService gRPC surface: decode, call the rules and the store, encode."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty
from rideshare.passengers.v1 import passengers_pb2_grpc
from rideshare.passengers.v1.passengers_pb2 import (
    ChangePasswordRequest,
    CreatePassengerRequest,
    DeletePassengerRequest,
    GetPassengerRequest,
    ListPassengersRequest,
    ListPassengersResponse,
    Passenger,
    RefreshSessionRequest,
    Session,
    SignInRequest,
    SignOutRequest,
    UpdatePassengerRequest,
)

from services.runtime.aip import timestamp_from_ns
from services.runtime.principal import caller, require_owner
from services.runtime.resources import Store
from services.runtime.sessions import Accounts, Grant, hash_password

from . import domain

Context = grpc.aio.ServicerContext[Any, Any]


class PassengerServicer(passengers_pb2_grpc.PassengerServiceServicer):
    """Passengers: create, read, list, update and delete profiles; sign in."""

    def __init__(self, store: Store[Passenger], accounts: Accounts) -> None:
        self.store = store
        self.accounts = accounts

    async def CreatePassenger(self, request: CreatePassengerRequest, context: Context) -> Passenger:
        passenger = domain.new_passenger(request.passenger)
        password = request.passenger.password
        hashed = await hash_password(password) if password else ""
        return await self.store.create(passenger, domain.without_password(request), password_hash=hashed)

    async def SignIn(self, request: SignInRequest, context: Context) -> Session:
        grant = await self.accounts.sign_in(request.email, request.password, caller().client)
        return await self._session(grant)

    async def RefreshSession(self, request: RefreshSessionRequest, context: Context) -> Session:
        return await self._session(await self.accounts.refresh(request.refresh_token))

    async def SignOut(self, request: SignOutRequest, context: Context) -> Empty:
        await self.accounts.sign_out(request.refresh_token)
        return Empty()

    async def ChangePassword(self, request: ChangePasswordRequest, context: Context) -> Session:
        self._mine(request.name)
        await self.store.get(request.name)  # NOT_FOUND for an operator naming no one
        grant = await self.accounts.change_password(
            self.store.id_of(request.name), request.current_password, request.new_password, caller().client
        )
        return await self._session(grant)

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

    def _mine(self, name: str, field: str = "name") -> None:
        """Only its passenger (or an operator) acts on a passenger; to anyone else it does not exist."""
        require_owner([name], lambda: self.store.not_found(self.store.id_of(name, field)))

    async def _session(self, grant: Grant) -> Session:
        return Session(
            access_token=grant.access.token,
            expire_time=timestamp_from_ns(int(grant.access.expire_time * 1e9)),
            refresh_token=grant.refresh_token,
            refresh_expire_time=timestamp_from_ns(int(grant.refresh_expire_time * 1e9)),
            passenger=await self.store.get(grant.account),
        )
