"""PaymentService over a real grpc.aio channel to an in-process server: outcomes, exactly once, refunds."""

from __future__ import annotations

import re

import grpc
import pytest
from google.type.money_pb2 import Money
from rideshare.payments.v1 import payments_pb2 as pb
from rideshare.payments.v1 import payments_pb2_grpc

from services.payments import app
from services.payments.processor import SimulatedProcessor
from services.payments.servicer import PaymentServicer
from services.runtime.client import Clients
from services.runtime.errors import Unavailable
from services.runtime.server import Runtime, Service
from tests.conftest import with_port
from tests.payments.conftest import processor, start_payments

NAME = re.compile(r"^payments/[0-9a-f]{32}$")
DOMAIN = "payments.rideshare"
SUCCEEDED = pb.PaymentState.PAYMENT_STATE_SUCCEEDED
DECLINED = pb.PaymentState.PAYMENT_STATE_DECLINED
REFUNDED = pb.PaymentState.PAYMENT_STATE_REFUNDED


def eur(units: int, nanos: int = 0) -> Money:
    return Money(currency_code="EUR", units=units, nanos=nanos)


def draft(invoice: str = "invoices/i1", method: str = "pm_card_visa", **fields) -> pb.Payment:
    values = {"amount": eur(6, 970_000_000)}
    values.update(fields)
    return pb.Payment(invoice=invoice, payment_method=method, **values)


def pay_request(request_id: str = "", **fields) -> pb.CreatePaymentRequest:
    return pb.CreatePaymentRequest(payment=draft(**fields), request_id=request_id)


def pay(payments, request_id: str = "", **fields) -> pb.Payment:
    return payments.call(payments.payments.CreatePayment(pay_request(request_id, **fields)))


def refund(payments, name: str, request_id: str = "") -> pb.Payment:
    return payments.call(
        payments.payments.RefundPayment(pb.RefundPaymentRequest(name=name, request_id=request_id))
    )


def get(payments, name: str) -> pb.Payment:
    return payments.call(payments.payments.GetPayment(pb.GetPaymentRequest(name=name)))


def list_all(payments, page_size: int, invoice: str = "") -> list[list[str]]:
    pages, token = [], ""
    while True:
        request = pb.ListPaymentsRequest(page_size=page_size, page_token=token, invoice=invoice)
        response = payments.call(payments.payments.ListPayments(request))
        pages.append([p.name for p in response.payments])
        token = response.next_page_token
        if not token:
            return pages


def test_a_visa_card_is_charged(payments):
    payment = pay(payments)

    assert NAME.match(payment.name)
    assert payment.state == SUCCEEDED
    assert payment.decline_reason == ""
    assert (payment.invoice, payment.amount, payment.payment_method) == (
        "invoices/i1",
        eur(6, 970_000_000),
        "pm_card_visa",
    )
    assert payment.create_time.seconds > 0
    assert payment.update_time == payment.create_time
    assert get(payments, payment.name) == payment
    assert processor(payments).charge_count() == 1


def test_a_declined_card_is_a_recorded_outcome_not_an_error(payments):
    payment = pay(payments, method="pm_card_declined")

    assert payment.state == DECLINED
    assert payment.decline_reason == "card_declined"
    assert get(payments, payment.name) == payment
    assert processor(payments).charge_count() == 0
    assert processor(payments).attempt_count() == 1


def test_an_unknown_payment_method_is_declined_as_unsupported(payments):
    payment = pay(payments, method="pm_card_amex")

    assert payment.state == DECLINED
    assert payment.decline_reason == "unsupported_payment_method"


def test_server_sets_name_state_and_times_ignoring_what_the_client_sent(payments):
    payment = pay(
        payments, name="payments/mine", state=REFUNDED, decline_reason="nope", create_time={"seconds": 1}
    )

    assert NAME.match(payment.name)
    assert (payment.state, payment.decline_reason) == (SUCCEEDED, "")
    assert payment.create_time.seconds > 1


def test_a_replayed_request_id_returns_the_same_payment_and_charges_once(payments):
    first = pay(payments, request_id="payment:trips/t1")
    replays = [pay(payments, request_id="payment:trips/t1") for _ in range(3)]

    assert replays == [first] * 3
    assert processor(payments).charge_count() == 1
    assert processor(payments).attempt_count() == 1
    assert list_all(payments, 10) == [[first.name]]


def test_a_replayed_decline_stays_declined_without_a_new_attempt(payments):
    first = pay(payments, request_id="r-1", method="pm_card_declined")

    assert pay(payments, request_id="r-1", method="pm_card_declined") == first
    assert processor(payments).attempt_count() == 1


@pytest.mark.parametrize(
    "changed", [{"amount": eur(7)}, {"method": "pm_card_declined"}, {"invoice": "invoices/i2"}]
)
def test_a_request_id_reused_with_another_payment_is_refused_and_charges_nothing(payments, changed):
    pay(payments, request_id="r-1")

    failure = payments.fail(payments.payments.CreatePayment(pay_request("r-1", **changed)))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "REQUEST_ID_REUSED"
    assert failure.info.domain == DOMAIN
    assert failure.fields == ["request_id"]
    assert processor(payments).attempt_count() == 1


class LosesTheFirstAnswer(PaymentServicer):
    """Charges and commits, then fails the first call as if the connection dropped before the answer."""

    lost = False

    async def CreatePayment(self, request, context):
        payment = await super().CreatePayment(request, context)
        if not self.lost:
            self.lost = True
            raise Unavailable("connection reset before the answer was sent")
        return payment


def losing_payments(runtime: Runtime) -> list[Service]:
    service = app.create(runtime)
    service.servicer = LosesTheFirstAnswer(service.servicer.store, service.servicer.billing)
    return [service]


def test_a_retry_after_a_lost_answer_gets_the_first_payment_and_charges_once(serve):
    payments = start_payments(serve, make=losing_payments)

    lost = payments.fail(payments.payments.CreatePayment(pay_request("payment:trips/t1")))
    retried = pay(payments, request_id="payment:trips/t1")

    assert lost.code is grpc.StatusCode.UNAVAILABLE
    assert retried.state == SUCCEEDED
    assert list_all(payments, 10) == [[retried.name]]
    assert processor(payments).charge_count() == 1


def test_the_mesh_client_retries_a_lost_answer_transparently_and_charges_once(serve, mesh_config):
    payments = start_payments(serve, make=losing_payments)
    clients = Clients(with_port(mesh_config, "payments", payments.port), caller="trips")
    try:
        stub = clients.stub(payments_pb2_grpc.PaymentServiceStub)
        payment = payments.call(stub.CreatePayment(pay_request("payment:trips/t1")))
    finally:
        payments.call(clients.close())

    assert payment.state == SUCCEEDED
    assert list_all(payments, 10) == [[payment.name]]
    assert processor(payments).charge_count() == 1


class CrashesAfterCharging(SimulatedProcessor):
    """Charges, then the process 'dies' before the payment is recorded, once."""

    crashed = False

    async def charge(self, tx, charge):
        outcome = await super().charge(tx, charge)
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("crash between the charge and the payment record")
        return outcome


def crashing_payments(runtime: Runtime) -> list[Service]:
    service = app.create(runtime)
    store = service.servicer.store
    store.processor = CrashesAfterCharging(store.db)
    return [service]


def test_a_crash_between_charge_and_record_leaves_no_charge_and_the_retry_charges_once(serve):
    payments = start_payments(serve, make=crashing_payments)

    crashed = payments.fail(payments.payments.CreatePayment(pay_request("payment:trips/t1")))
    assert crashed.code is grpc.StatusCode.INTERNAL
    assert processor(payments).attempt_count() == 0
    assert list_all(payments, 10) == [[]]

    retried = pay(payments, request_id="payment:trips/t1")
    assert retried.state == SUCCEEDED
    assert processor(payments).charge_count() == 1


def test_replays_after_a_restart_return_the_same_payment_and_charge_nothing(serve, payments):
    first = pay(payments, request_id="payment:trips/t1")
    declined = pay(payments, request_id="payment:trips/t2", invoice="invoices/i2", method="pm_card_declined")
    payments.stop()

    restarted = start_payments(serve)

    assert pay(restarted, request_id="payment:trips/t1") == first
    assert (
        pay(restarted, request_id="payment:trips/t2", invoice="invoices/i2", method="pm_card_declined")
        == declined
    )
    assert get(restarted, first.name) == first
    assert processor(restarted).charge_count() == 1
    assert processor(restarted).attempt_count() == 2
    assert list_all(restarted, 10) == [[first.name, declined.name]]


def test_a_paid_invoice_cannot_be_charged_again(payments):
    first = pay(payments, request_id="r-1")

    failure = payments.fail(payments.payments.CreatePayment(pay_request("r-2")))

    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.info.reason == "INVOICE_ALREADY_PAID"
    assert failure.info.domain == DOMAIN
    assert failure.info.metadata["payment"] == first.name
    assert processor(payments).attempt_count() == 1
    assert pay(payments, request_id="r-1") == first


def test_a_declined_invoice_can_be_charged_again_with_another_method(payments):
    declined = pay(payments, method="pm_card_declined")
    paid = pay(payments, method="pm_card_visa")

    assert (declined.state, paid.state) == (DECLINED, SUCCEEDED)
    assert list_all(payments, 10, invoice="invoices/i1") == [[declined.name, paid.name]]


def test_refund_gives_a_successful_payment_back(payments):
    paid = pay(payments)

    refunded = refund(payments, paid.name)

    assert refunded.state == REFUNDED
    assert refunded.create_time == paid.create_time
    assert refunded.update_time.ToNanoseconds() >= paid.update_time.ToNanoseconds()
    assert get(payments, paid.name) == refunded
    assert processor(payments).refund_count() == 1


def test_a_refund_replayed_with_its_request_id_returns_the_same_answer(payments):
    paid = pay(payments)

    first = refund(payments, paid.name, request_id="refund-1")
    again = refund(payments, paid.name, request_id="refund-1")

    assert again == first
    assert processor(payments).refund_count() == 1


def test_a_second_refund_is_already_refunded(payments):
    paid = pay(payments)
    refund(payments, paid.name)

    failure = payments.fail(payments.payments.RefundPayment(pb.RefundPaymentRequest(name=paid.name)))

    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.info.reason == "PAYMENT_ALREADY_REFUNDED"


def test_a_declined_payment_cannot_be_refunded(payments):
    declined = pay(payments, method="pm_card_declined")

    failure = payments.fail(payments.payments.RefundPayment(pb.RefundPaymentRequest(name=declined.name)))

    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.info.reason == "PAYMENT_NOT_SUCCEEDED"
    assert get(payments, declined.name) == declined


def test_a_refunded_invoice_can_be_charged_again(payments):
    first = pay(payments)
    refund(payments, first.name)

    again = pay(payments)

    assert again.state == SUCCEEDED
    assert processor(payments).charge_count() == 2


@pytest.mark.parametrize(
    "call",
    [
        lambda stub, name: stub.GetPayment(pb.GetPaymentRequest(name=name)),
        lambda stub, name: stub.RefundPayment(pb.RefundPaymentRequest(name=name)),
    ],
)
def test_a_missing_payment_is_not_found(payments, call):
    missing = "payments/" + "0" * 32

    failure = payments.fail(call(payments.payments, missing))

    assert failure.code is grpc.StatusCode.NOT_FOUND
    assert failure.info.reason == "PAYMENT_NOT_FOUND"
    assert dict(failure.info.metadata) == {"name": missing}


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"amount": eur(-1)}, ["payment.amount"]),
        ({"amount": Money(currency_code="eur", units=1)}, ["payment.amount.currency_code"]),
        ({"amount": Money(currency_code="EUR", units=1, nanos=-1)}, ["payment.amount.nanos"]),
    ],
)
def test_a_bad_amount_is_invalid_amount_and_charges_nothing(payments, fields, bad):
    failure = payments.fail(payments.payments.CreatePayment(pay_request(**fields)))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "INVALID_AMOUNT"
    assert failure.fields == bad
    assert processor(payments).attempt_count() == 0


@pytest.mark.parametrize(
    ("payment", "fields"),
    [
        (None, ["payment"]),
        (pb.Payment(), ["payment.invoice", "payment.amount", "payment.payment_method"]),
        (draft(invoice="trips/t1"), ["payment.invoice"]),
        (draft(method="pm card"), ["payment.payment_method"]),
        (draft(method="x" * 256), ["payment.payment_method"]),
    ],
)
def test_incomplete_or_malformed_payments_name_the_fields(payments, payment, fields):
    failure = payments.fail(payments.payments.CreatePayment(pb.CreatePaymentRequest(payment=payment)))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == fields
    assert processor(payments).attempt_count() == 0


def test_list_pages_oldest_first_and_filters_by_invoice(payments):
    names = [pay(payments, invoice=f"invoices/i{i % 2}", method="pm_card_declined").name for i in range(5)]

    assert list_all(payments, 2) == [names[0:2], names[2:4], names[4:5]]
    assert list_all(payments, 2, invoice="invoices/i0") == [[names[0], names[2]], [names[4]]]
    assert list_all(payments, 0, invoice="invoices/i1") == [[names[1], names[3]]]
    assert list_all(payments, 2, invoice="invoices/none") == [[]]


def test_a_page_token_only_continues_the_same_filter(payments):
    for _ in range(2):
        pay(payments, method="pm_card_declined")
    first = payments.call(
        payments.payments.ListPayments(pb.ListPaymentsRequest(page_size=1, invoice="invoices/i1"))
    )

    failure = payments.fail(
        payments.payments.ListPayments(pb.ListPaymentsRequest(page_size=1, page_token=first.next_page_token))
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["page_token"]
