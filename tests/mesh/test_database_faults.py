"""PostgreSQL failing under traffic: whole trips through the six real services while their databases'
connections are terminated, then while the databases refuse connections altogether.

Riders run trip after trip (passenger, driver, request, accept, start,
complete), each step with a request_id and repeated on UNAVAILABLE as a
client does. Mid-run every connection of the six databases is terminated
(`pg_terminate_backend`); later the databases refuse connections
(`ALLOW_CONNECTIONS false`, the nearest thing to a stopped server on a server
others share) until the test lets them back. What must hold: every failed
call is UNAVAILABLE, and one that reached a database names it; every service
reports NOT_SERVING during the outage and SERVING after; the pools reconnect
by themselves (the riders finish); and every record is whole: one passenger,
driver, invoice, payment and processor charge per ride, nothing half-written
or doubled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import psycopg
import pytest
from google.type.latlng_pb2 import LatLng
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rideshare.billing.v1 import billing_pb2
from rideshare.drivers.v1 import drivers_pb2
from rideshare.notifications.v1 import notifications_pb2
from rideshare.passengers.v1 import passengers_pb2
from rideshare.payments.v1 import payments_pb2
from rideshare.trips.v1 import trips_pb2

from services.runtime.postgres import CONNECTION_TROUBLE, describe
from tests import postgres
from tests.conftest import Failure, failure_of
from tests.trips.rides import released
from tests.whole_mesh import SERVICES, Mesh

RIDERS = 3
RIDES_EACH = 4
PATIENCE = 90.0
"""A bound on the whole scenario, not a speed check."""
CLIENT_PAUSE = 0.05
"""How long a rider waits before repeating a call that met UNAVAILABLE (a client's backoff)."""
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def storage_table(dsn: str) -> str:
    return (
        f'\n[storage]\nbackend = "postgres"\ndsn = "{dsn}"\npool_max = 4\n'
        'connect_timeout = "1s"\nhealth_interval = "200ms"\n'
    )


@pytest.fixture
def mesh(runner, tmp_path, postgres_databases):
    running = Mesh(runner, tmp_path, storage_table(postgres_databases.per_service()))
    try:
        running.start()
        yield running
    finally:
        running.close()


@dataclass
class Ride:
    passenger: str
    driver: str
    trip: trips_pb2.Trip


@dataclass
class Traffic:
    """What the riders saw."""

    rides: list[Ride] = field(default_factory=list)
    failures: list[tuple[str, Failure]] = field(default_factory=list)

    async def call(self, what: str, call: Callable[[], Awaitable[object]]) -> object:
        """`call()` until it answers; UNAVAILABLE is noted and repeated (same request, same request_id)."""
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as error:
                self.failures.append((what, failure_of(error)))
                if error.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
            await asyncio.sleep(CLIENT_PAUSE)


def place(n: int) -> LatLng:
    """Ride n's driver stands here: 0.3 degrees (~33 km) from every other ride's."""
    return LatLng(latitude=-60.0 + 0.3 * n, longitude=20.0)


def north(of: LatLng, meters: float) -> LatLng:
    return LatLng(latitude=of.latitude + meters / 111_195.0, longitude=of.longitude)


async def ride(mesh: Mesh, traffic: Traffic, n: int) -> None:
    key = f"ride-{n}"
    passenger = await traffic.call(
        "CreatePassenger",
        lambda: mesh.passengers.CreatePassenger(
            passengers_pb2.CreatePassengerRequest(
                passenger=passengers_pb2.Passenger(display_name=f"P{n}", email=f"{key}@example.com"),
                request_id=f"{key}-passenger",
            )
        ),
    )
    driver = await traffic.call(
        "CreateDriver",
        lambda: mesh.drivers.CreateDriver(
            drivers_pb2.CreateDriverRequest(
                driver=drivers_pb2.Driver(
                    display_name=f"D{n}",
                    vehicle=drivers_pb2.Vehicle(make="Toyota", model="Prius", license_plate=f"B-RS {n}"),
                ),
                request_id=f"{key}-driver",
            )
        ),
    )
    await traffic.call(
        "GoOnline",
        lambda: mesh.drivers.GoOnline(
            drivers_pb2.GoOnlineRequest(name=driver.name, location=place(n), request_id=f"{key}-online")
        ),
    )
    trip = await traffic.call(
        "RequestTrip",
        lambda: mesh.trips.RequestTrip(
            trips_pb2.RequestTripRequest(
                passenger=passenger.name,
                pickup=north(place(n), 300),
                dropoff=north(place(n), 4000),
                payment_method="pm_card_visa",
                request_id=f"{key}-trip",
            )
        ),
    )
    steps = {
        "AcceptTrip": (mesh.trips.AcceptTrip, trips_pb2.AcceptTripRequest),
        "StartTrip": (mesh.trips.StartTrip, trips_pb2.StartTripRequest),
        "CompleteTrip": (mesh.trips.CompleteTrip, trips_pb2.CompleteTripRequest),
    }
    for name, (method, request) in steps.items():
        rpc = request(name=trip.name, request_id=f"{key}-{name}")
        trip = await traffic.call(name, lambda method=method, rpc=rpc: method(rpc))
    traffic.rides.append(Ride(passenger.name, driver.name, trip))


async def rider(mesh: Mesh, traffic: Traffic, index: int) -> None:
    for k in range(RIDES_EACH):
        await ride(mesh, traffic, index * RIDES_EACH + k)


async def until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110  (the riders' progress has no event to await)
        await asyncio.sleep(0.01)


async def health_of(mesh: Mesh, wanted: int) -> dict[str, int]:
    """Each service's overall health, once all of them report `wanted` (watched, not polled)."""

    async def one(name: str) -> int:
        watch = health_pb2_grpc.HealthStub(mesh.channels[name]).Watch(health_pb2.HealthCheckRequest())
        try:
            while (status := (await watch.read()).status) != wanted:
                pass
            return status
        finally:
            watch.cancel()

    return dict(zip(SERVICES, await asyncio.gather(*(one(name) for name in SERVICES)), strict=True))


async def one_read_each(mesh: Mesh, ride: Ride) -> dict[str, Failure | None]:
    """A read from every service that needs its database; each one's failure (None if it answered)."""
    reads = {
        "passengers": lambda: mesh.passengers.GetPassenger(
            passengers_pb2.GetPassengerRequest(name=ride.passenger)
        ),
        "drivers": lambda: mesh.drivers.GetDriver(drivers_pb2.GetDriverRequest(name=ride.driver)),
        "trips": lambda: mesh.trips.GetTrip(trips_pb2.GetTripRequest(name=ride.trip.name)),
        "billing": lambda: mesh.billing.GetInvoice(billing_pb2.GetInvoiceRequest(name=ride.trip.invoice)),
        "payments": lambda: mesh.payments.GetPayment(payments_pb2.GetPaymentRequest(name=ride.trip.payment)),
        "notifications": lambda: mesh.notifications.ListNotifications(
            notifications_pb2.ListNotificationsRequest(parent=ride.passenger)
        ),
    }

    async def failure(read: Callable[[], Awaitable[object]]) -> Failure | None:
        try:
            await read()
        except grpc.aio.AioRpcError as error:
            return failure_of(error)
        return None

    found = await asyncio.gather(*(failure(read) for read in reads.values()))
    return dict(zip(reads, found, strict=True))


def test_database_faults_under_traffic_fail_calls_unavailable_and_leave_every_record_whole(
    mesh, postgres_databases, caplog
):
    caplog.set_level(logging.INFO)
    dsns = {name: postgres_databases.per_service().replace("{service}", name) for name in SERVICES}
    seen: dict[str, object] = {}

    async def scenario() -> Traffic:
        traffic = Traffic()
        riders = [asyncio.ensure_future(rider(mesh, traffic, i)) for i in range(RIDERS)]
        await until(lambda: len(traffic.rides) >= 2)
        # Mid-run, every connection goes: transactions in flight roll back, pooled ones are dead.
        seen["terminated"] = await asyncio.to_thread(postgres.terminate, *dsns.values())
        await until(lambda: len(traffic.rides) >= 5)  # the pools replaced them without help
        await asyncio.to_thread(postgres.allow_connections, False, *dsns.values())
        try:
            seen["down"] = await health_of(mesh, NOT_SERVING)
            seen["reads"] = await one_read_each(mesh, traffic.rides[0])
        finally:
            await asyncio.to_thread(postgres.allow_connections, True, *dsns.values())
        seen["up"] = await health_of(mesh, SERVING)
        await asyncio.gather(*riders)
        return traffic

    async def bounded() -> Traffic:
        async with asyncio.timeout(PATIENCE):
            return await scenario()

    traffic = mesh.call(bounded())

    assert seen["terminated"] >= len(SERVICES)
    # Calls failed, and only as UNAVAILABLE: never UNKNOWN or INTERNAL, never a traceback.
    assert traffic.failures, "no call met the faults: the test did not test them"
    assert {f.code for _, f in traffic.failures} == {grpc.StatusCode.UNAVAILABLE}, traffic.failures
    assert not [f for _, f in traffic.failures if "Traceback" in f.message]
    # A service names its own database; trips names the service it could not reach (whose message
    # quotes that one's database, or its balancer's "backend unhealthy" once it is NOT_SERVING).
    named = {f.info.metadata.get("database") or f.info.metadata["service"] for _, f in traffic.failures}
    assert named <= {describe(dsn) for dsn in dsns.values()} | set(SERVICES)
    # During the outage: every service NOT_SERVING, and a read from each names its own database.
    assert seen["down"] == dict.fromkeys(SERVICES, NOT_SERVING)
    for service, failure in seen["reads"].items():
        assert failure is not None, f"{service} answered a read with its database refusing connections"
        assert (failure.code, failure.info.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
        assert failure.info.metadata["database"] == describe(dsns[service])
        assert failure.message.startswith(f"database {failure.info.metadata['database']} is unavailable")
    assert seen["up"] == dict.fromkeys(SERVICES, SERVING)
    # An outage is no bug in the logs: no traceback from the services (the trips outbox logged one
    # a second), no warning per connection attempt from psycopg_pool.
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("rideshare") and r.exc_info]
    pool = [r.getMessage() for r in caplog.records if r.name == "psycopg.pool" and r.levelno > logging.INFO]
    assert not [m for m in pool if m.startswith(CONNECTION_TROUBLE)], pool
    # The pools reconnected by themselves: every ride finished.
    assert len(traffic.rides) == RIDERS * RIDES_EACH
    check_every_record(mesh, traffic, dsns)


def check_every_record(mesh: Mesh, traffic: Traffic, dsns: dict[str, str]) -> None:
    """Each ride whole through the services' own answers, then the tables: nothing doubled or half there."""
    for done in traffic.rides:
        trip = mesh.call(mesh.trips.GetTrip(trips_pb2.GetTripRequest(name=done.trip.name)))
        assert trip.state == trips_pb2.TRIP_STATE_COMPLETED
        assert trip.driver == done.driver
        invoices = mesh.call(
            mesh.billing.ListInvoices(billing_pb2.ListInvoicesRequest(trip=trip.name))
        ).invoices
        assert [i.name for i in invoices] == [trip.invoice]
        assert invoices[0].amount == trip.fare
        payments = mesh.call(
            mesh.payments.ListPayments(payments_pb2.ListPaymentsRequest(invoice=trip.invoice))
        ).payments
        assert [p.name for p in payments] == [trip.payment]
        assert payments[0].state == payments_pb2.PAYMENT_STATE_SUCCEEDED
        assert payments[0].amount == trip.fare
        released(mesh, done.driver)

    # The trip service's outbox delivers what each step queued, once: every passenger's receipt
    # arrives, and no notification is there twice.
    async def receipts() -> bool:
        lists = [
            await mesh.notifications.ListNotifications(
                notifications_pb2.ListNotificationsRequest(parent=r.passenger)
            )
            for r in traffic.rides
        ]
        return all("Your receipt" in [n.title for n in found.notifications] for found in lists)

    mesh.eventually(receipts, "every passenger's receipt")
    doubled = (
        "SELECT count(*) FROM"
        " (SELECT 1 FROM notifications GROUP BY recipient, title, trip HAVING count(*) > 1) AS d"
    )
    assert count(dsns["notifications"], doubled) == 0

    rides = len(traffic.rides)
    assert count(dsns["passengers"], "SELECT count(*) FROM passengers") == rides
    assert count(dsns["drivers"], "SELECT count(*) FROM drivers") == rides
    assert count(dsns["billing"], "SELECT count(DISTINCT trip) FROM invoices") == rides
    assert count(dsns["billing"], "SELECT count(*) FROM invoices") == rides
    assert count(dsns["payments"], "SELECT count(*) FROM payments") == rides
    # Money taken and payment recorded in one transaction: a charge for each payment, none without.
    assert count(dsns["payments"], "SELECT count(*) FROM processor_charges") == rides
    assert (
        count(
            dsns["payments"],
            "SELECT count(*) FROM payments p JOIN processor_charges c ON c.id = p.charge_id"
            " WHERE c.succeeded = 1 AND (c.amount_units, c.amount_nanos) = (p.amount_units, p.amount_nanos)",
        )
        == rides
    )


def count(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])
