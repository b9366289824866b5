"""Every call the trip service makes to another service, in one place.

Calls go through `runtime.clients.stub(...)`, so each carries the deadline
of the call being served (or the mesh's client timeout) and is retried on
UNAVAILABLE by the channel. What a failure means for a trip is decided here
and nowhere else:

- a dependency that cannot be reached becomes UNAVAILABLE naming it, so the
  caller knows to repeat the call with the same request_id;
- the answers a trip step expects (an unknown passenger, no driver near the
  pickup, an invoice or payment that already exists) become return values;
  whether an existing invoice or payment may be adopted is the workflow's
  call (it must be for exactly the fare);
- anything else propagates and ends as INTERNAL: it is a bug here or there.
"""

from __future__ import annotations

import grpc
from google.type.latlng_pb2 import LatLng
from rideshare.billing.v1 import billing_pb2_grpc
from rideshare.billing.v1.billing_pb2 import (
    CreateInvoiceRequest,
    GetInvoiceRequest,
    Invoice,
    QuoteFareRequest,
    QuoteFareResponse,
)
from rideshare.drivers.v1 import drivers_pb2_grpc
from rideshare.drivers.v1.drivers_pb2 import (
    AssignNearestDriverRequest,
    BatchReleaseTripsRequest,
    Driver,
    ReleaseTripRequest,
)
from rideshare.notifications.v1 import notifications_pb2_grpc
from rideshare.notifications.v1.notifications_pb2 import (
    BatchSendNotificationsRequest,
    Notification,
    SendNotificationRequest,
)
from rideshare.passengers.v1 import passengers_pb2_grpc
from rideshare.passengers.v1.passengers_pb2 import GetPassengerRequest, Passenger
from rideshare.payments.v1 import payments_pb2_grpc
from rideshare.payments.v1.payments_pb2 import CreatePaymentRequest, GetPaymentRequest, Payment

from services.runtime import log
from services.runtime.client import Clients
from services.runtime.downstream import error_metadata, error_reason, failed_with, reaching
from services.runtime.errors import NotFound

from .notices import Notice
from .store import Release

_log = log.get_logger("rideshare.trips.clients")

#: Billing's reasons for "the trip already has another invoice" (metadata "invoice" names it).
_OTHER_INVOICE = ("INVOICE_AMOUNT_MISMATCH", "INVOICE_PASSENGER_MISMATCH")


class Downstream:
    """The other services, as the trip workflow needs them."""

    def __init__(self, clients: Clients) -> None:
        self.clients = clients

    async def get_passenger(self, name: str) -> Passenger:
        stub = self.clients.stub(passengers_pb2_grpc.PassengerServiceStub)
        with reaching("passengers"):
            try:
                passenger: Passenger = await stub.GetPassenger(GetPassengerRequest(name=name))
            except grpc.aio.AioRpcError as error:
                if failed_with(error, grpc.StatusCode.NOT_FOUND):
                    raise NotFound(
                        f"{name} does not exist", reason="PASSENGER_NOT_FOUND", metadata={"passenger": name}
                    ) from None
                raise
        return passenger

    async def assign_nearest_driver(self, trip: str, pickup: LatLng, radius_meters: float) -> Driver | None:
        """The driver ON_TRIP for `trip`: the one it already has, else the nearest AVAILABLE within the
        radius, taken now; None if there is none."""
        stub = self.clients.stub(drivers_pb2_grpc.DriverServiceStub)
        request = AssignNearestDriverRequest(trip=trip, pickup=pickup, radius_meters=radius_meters)
        with reaching("drivers"):
            try:
                assigned: Driver = await stub.AssignNearestDriver(request)
            except grpc.aio.AioRpcError as error:
                if failed_with(error, grpc.StatusCode.FAILED_PRECONDITION, "NO_DRIVER_AVAILABLE"):
                    return None
                raise
        return assigned

    async def send_release(self, release: Release, request_id: str) -> None:
        """Free the driver of a trip, for the outbox: a driver already free of it (or gone) is fine;
        other failures propagate as they are, as `send_notification`'s."""
        stub = self.clients.stub(drivers_pb2_grpc.DriverServiceStub)
        try:
            await stub.ReleaseTrip(_release_request(release, request_id))
        except grpc.aio.AioRpcError as error:
            gone = failed_with(error, grpc.StatusCode.NOT_FOUND)
            taken = failed_with(error, grpc.StatusCode.FAILED_PRECONDITION, "DRIVER_ON_ANOTHER_TRIP")
            if not (gone or taken):
                raise
            fields = {"driver": release.driver, "trip": release.trip, "reason": error_reason(error)}
            _log.info("driver was already released", extra={"fields": fields})

    async def send_releases(self, releases: list[tuple[Release, str]]) -> None:
        """Several at once, all or none (BatchReleaseTrips); raw, like `send_release`. A batch with a
        driver already released is refused whole: the outbox then sends its entries one by one."""
        stub = self.clients.stub(drivers_pb2_grpc.DriverServiceStub)
        request = BatchReleaseTripsRequest(requests=[_release_request(r, rid) for r, rid in releases])
        await stub.BatchReleaseTrips(request)

    async def quote_fare(self, pickup: LatLng, dropoff: LatLng) -> QuoteFareResponse:
        stub = self.clients.stub(billing_pb2_grpc.BillingServiceStub)
        with reaching("billing"):
            quote: QuoteFareResponse = await stub.QuoteFare(QuoteFareRequest(pickup=pickup, dropoff=dropoff))
        return quote

    async def create_invoice(self, invoice: Invoice, request_id: str) -> Invoice:
        """The invoice billing holds for the trip: made now, or the one it already had.

        Billing prices it; an invoice it already had for the trip is returned as
        it is, even if it differs (billing says so), for the workflow to compare
        with the fare before adopting anything.
        """
        stub = self.clients.stub(billing_pb2_grpc.BillingServiceStub)
        with reaching("billing"):
            try:
                created: Invoice = await stub.CreateInvoice(
                    CreateInvoiceRequest(invoice=invoice, request_id=request_id)
                )
            except grpc.aio.AioRpcError as error:
                existing = error_metadata(error).get("invoice", "")
                if not existing or not (
                    failed_with(error, grpc.StatusCode.ALREADY_EXISTS, "INVOICE_ALREADY_EXISTS")
                    or failed_with(error, grpc.StatusCode.FAILED_PRECONDITION, *_OTHER_INVOICE)
                ):
                    raise
                created = await stub.GetInvoice(GetInvoiceRequest(name=existing))
        return created

    async def create_payment(self, payment: Payment, request_id: str) -> Payment:
        """The charge of the invoice: made once, or the successful one payments already has.

        The workflow compares its amount with the fare before adopting it.
        """
        stub = self.clients.stub(payments_pb2_grpc.PaymentServiceStub)
        with reaching("payments"):
            try:
                created: Payment = await stub.CreatePayment(
                    CreatePaymentRequest(payment=payment, request_id=request_id)
                )
            except grpc.aio.AioRpcError as error:
                existing = error_metadata(error).get("payment", "")
                if not (
                    failed_with(error, grpc.StatusCode.FAILED_PRECONDITION, "INVOICE_ALREADY_PAID")
                    and existing
                ):
                    raise
                created = await stub.GetPayment(GetPaymentRequest(name=existing))
        return created

    async def send_notification(self, notice: Notice, request_id: str) -> Notification:
        """Raw: the outbox decides what a failure means, so errors propagate as they are."""
        stub = self.clients.stub(notifications_pb2_grpc.NotificationServiceStub)
        sent: Notification = await stub.SendNotification(_send_request(notice, request_id))
        return sent

    async def send_notifications(self, notices: list[tuple[Notice, str]]) -> list[Notification]:
        """Several at once, all or none (BatchSendNotifications); raw, like `send_notification`."""
        stub = self.clients.stub(notifications_pb2_grpc.NotificationServiceStub)
        request = BatchSendNotificationsRequest(requests=[_send_request(n, rid) for n, rid in notices])
        sent = await stub.BatchSendNotifications(request)
        return list(sent.notifications)


def _send_request(notice: Notice, request_id: str) -> SendNotificationRequest:
    notification = Notification(
        recipient=notice.recipient, title=notice.title, body=notice.body, trip=notice.trip
    )
    return SendNotificationRequest(notification=notification, request_id=request_id)


def _release_request(release: Release, request_id: str) -> ReleaseTripRequest:
    return ReleaseTripRequest(name=release.driver, trip=release.trip, request_id=request_id)
