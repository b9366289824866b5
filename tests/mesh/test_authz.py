"""Authorization: the decision table from mesh.toml, its config errors, and an mTLS server enforcing it."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rideshare.payments.v1 import payments_pb2, payments_pb2_grpc

from services.mesh import certs
from services.runtime import authz, identity
from services.runtime.client import Clients
from services.runtime.config import load_config
from services.runtime.errors import ConfigError, PermissionDenied

from ..conftest import with_port, write_mesh_file
from .peers import Peer

PAYMENTS = payments_pb2.DESCRIPTOR.services_by_name["PaymentService"]
SERVICE = "rideshare.payments.v1.PaymentService"
METHODS = ("CreatePayment", "GetPayment", "ListPayments", "RefundPayment")

MESH = """\
data_dir = "data"
grace_period = "1s"
[tls]
enabled = true
[services.passengers]
port = 6001
[services.trips]
port = 6003
[services.payments]
port = 0
[services.payments.authz]
{rules}
"""
RULES = """\
"*" = ["trips", "gateway", "mesh"]
"CreatePayment" = ["trips", "gateway"]
"""


def config_of(tmp_path: Path, rules: str = RULES, env: dict[str, str] | None = None, text: str = MESH):
    return load_config(write_mesh_file(tmp_path, text.format(rules=rules)), env=env or {})


def table(config, descriptors=(PAYMENTS,)) -> dict[str, set[str]]:
    rules = authz.compile_rules(config, config.service("payments"), list(descriptors))
    return {path.rsplit("/", 1)[-1]: set(rule.callers) for path, rule in rules.items()}


# -- the decision table -----------------------------------------------------------------------------------


def test_a_method_rule_replaces_the_star_rule_and_the_star_covers_the_rest(tmp_path):
    assert table(config_of(tmp_path)) == {
        "CreatePayment": {"trips", "gateway"},
        "GetPayment": {"trips", "gateway", "mesh"},
        "ListPayments": {"trips", "gateway", "mesh"},
        "RefundPayment": {"trips", "gateway", "mesh"},
    }


def test_once_a_service_has_a_rule_methods_no_rule_covers_allow_nobody(tmp_path):
    assert table(config_of(tmp_path, '"CreatePayment" = ["trips"]')) == {
        "CreatePayment": {"trips"},
        "GetPayment": set(),
        "ListPayments": set(),
        "RefundPayment": set(),
    }


def test_a_service_without_rules_has_no_table_and_no_checks(tmp_path):
    config = load_config(write_mesh_file(tmp_path, "[services.payments]\nport = 0\n"), env={})

    assert authz.compile_rules(config, config.service("payments"), [PAYMENTS]) == {}
    assert authz.checks(config, config.service("payments"), [PAYMENTS]) == {}


@pytest.mark.parametrize(
    "selector",
    [
        "CreatePayment",
        "PaymentService/CreatePayment",
        f"{SERVICE}/CreatePayment",
        "/" + SERVICE + "/CreatePayment",
    ],
)
def test_a_method_can_be_named_short_qualified_or_in_full(tmp_path, selector):
    assert table(config_of(tmp_path, f'"{selector}" = ["trips"]'))["CreatePayment"] == {"trips"}


def test_rules_from_the_environment_match_method_names_ignoring_case(tmp_path):
    config = config_of(
        tmp_path, '"*" = ["gateway"]', env={"MESH_SERVICES__PAYMENTS__AUTHZ__REFUNDPAYMENT": "gateway,mesh"}
    )

    assert table(config)["RefundPayment"] == {"gateway", "mesh"}


def test_an_unknown_method_is_a_config_error_with_a_suggestion(tmp_path):
    config = config_of(tmp_path, '"CreatePaymnt" = ["trips"]')

    with pytest.raises(
        ConfigError,
        match=re.escape(
            "services.payments.authz.CreatePaymnt: no such method in payments's contracts "
            "(did you mean 'CreatePayment'?)"
        ),
    ):
        table(config)


def test_two_selectors_for_one_method_are_a_config_error(tmp_path):
    config = config_of(tmp_path, '"CreatePayment" = ["trips"]\n"PaymentService/CreatePayment" = ["gateway"]')

    with pytest.raises(ConfigError, match="names the same method as 'CreatePayment'"):
        table(config)


def test_a_method_name_two_contracts_share_must_be_qualified(tmp_path):
    file = descriptor_pb2.FileDescriptorProto(name="twins.proto", package="twins.v1")
    file.dependency.append("google/protobuf/empty.proto")
    for service in ("Left", "Right"):
        file.service.add(name=service).method.add(
            name="Ping", input_type=".google.protobuf.Empty", output_type=".google.protobuf.Empty"
        )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(empty_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    left, right = pool.FindServiceByName("twins.v1.Left"), pool.FindServiceByName("twins.v1.Right")

    with pytest.raises(
        ConfigError, match=re.escape("names several methods (Left/Ping, Right/Ping); qualify it")
    ):
        table(config_of(tmp_path, '"Ping" = ["trips"]'), [left, right])
    config = config_of(tmp_path, '"Left/Ping" = ["trips"]')
    rules = authz.compile_rules(config, config.service("payments"), [left, right])
    assert {path: set(rule.callers) for path, rule in rules.items()} == {
        "/twins.v1.Left/Ping": {"trips"},
        "/twins.v1.Right/Ping": set(),
    }


# -- the check --------------------------------------------------------------------------------------------


def check(config, method: str):
    return authz.checks(config, config.service("payments"), [PAYMENTS])[f"/{SERVICE}/{method}"]


def test_an_allowed_caller_passes(tmp_path):
    check(config_of(tmp_path), "CreatePayment")(Peer("spiffe://rideshare.local/service/trips"))


def test_a_caller_not_allowed_is_denied_by_name_and_method(tmp_path):
    with pytest.raises(PermissionDenied) as denied:
        check(config_of(tmp_path), "CreatePayment")(Peer("spiffe://rideshare.local/service/mesh"))

    assert denied.value.reason == "CALLER_NOT_ALLOWED"
    assert denied.value.metadata == {"caller": "mesh", "method": f"{SERVICE}/CreatePayment"}
    assert str(denied.value) == f"mesh may not call {SERVICE}/CreatePayment"


def test_star_allows_any_member_of_the_trust_domain_and_no_one_else(tmp_path):
    allowed = check(config_of(tmp_path, '"GetPayment" = ["*"]'), "GetPayment")

    allowed(Peer("spiffe://rideshare.local/service/passengers"))
    allowed(Peer("spiffe://rideshare.local/service/not-in-the-mesh-file"))
    with pytest.raises(PermissionDenied) as denied:
        allowed(Peer("spiffe://elsewhere.test/service/trips"))
    assert denied.value.metadata["caller"] == "spiffe://elsewhere.test/service/trips"


def test_a_caller_without_a_spiffe_id_is_unidentified_and_denied(tmp_path):
    with pytest.raises(PermissionDenied) as denied:
        check(config_of(tmp_path), "GetPayment")(Peer(None))

    assert denied.value.metadata["caller"] == "unidentified"


# -- configuration errors ---------------------------------------------------------------------------------


def test_rules_without_tls_are_refused_because_no_caller_could_be_identified(tmp_path):
    with pytest.raises(ConfigError, match=r"services\.payments\.authz: authorization rules need tls"):
        config_of(tmp_path, text=MESH.replace("enabled = true", "enabled = false"))


def test_an_unknown_caller_is_a_config_error_with_a_suggestion(tmp_path):
    with pytest.raises(
        ConfigError, match=re.escape("services.payments.authz.CreatePayment: unknown caller 'trip'")
    ) as error:
        config_of(tmp_path, '"CreatePayment" = ["trip"]')

    assert "did you mean 'trips'?" in str(error.value)


@pytest.mark.parametrize("rules", ['"CreatePayment" = 5', '"CreatePayment" = [1]', '"CreatePayment" = [""]'])
def test_callers_must_be_a_list_of_names(tmp_path, rules):
    with pytest.raises(ConfigError, match=r"services\.payments\.authz\.CreatePayment: expected a list"):
        config_of(tmp_path, rules)


def test_authz_must_be_a_table(tmp_path):
    text = MESH.replace("[services.payments.authz]\n{rules}\n", 'authz = ["trips"]\n')
    with pytest.raises(ConfigError, match=r"services\.payments\.authz: expected a table"):
        config_of(tmp_path, text=text)


def test_the_gateway_and_the_mesh_tool_are_callers_too(tmp_path):
    assert table(config_of(tmp_path, '"*" = ["gateway", "mesh"]'))["GetPayment"] == {"gateway", "mesh"}


# -- a real server over mTLS --------------------------------------------------------------------------------


@pytest.fixture
def tls_config(tmp_path):
    config = config_of(tmp_path)
    certs.ensure(config)
    return config


@pytest.fixture
def payments(serve, tls_config):
    return serve("payments", config=tls_config)


def channel_as(config, name: str, port: int) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        identity.channel_credentials(config, name),
        options=identity.channel_options(config, "payments"),
    )


def test_over_mtls_an_allowed_caller_reaches_the_handler(payments, tls_config):
    stub = payments_pb2_grpc.PaymentServiceStub(channel_as(tls_config, "trips", payments.port))

    failure = payments.fail(stub.CreatePayment(payments_pb2.CreatePaymentRequest()))

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT  # past authorization, stopped by validation


def test_over_mtls_a_caller_not_allowed_is_denied_before_validation(payments, tls_config):
    stub = payments_pb2_grpc.PaymentServiceStub(channel_as(tls_config, "passengers", payments.port))

    failure = payments.fail(stub.CreatePayment(payments_pb2.CreatePaymentRequest()))

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert failure.message == f"passengers may not call {SERVICE}/CreatePayment"
    assert failure.info is not None
    assert failure.info.reason == "CALLER_NOT_ALLOWED"
    assert failure.info.domain == "payments.rideshare"
    assert dict(failure.info.metadata) == {"caller": "passengers", "method": f"{SERVICE}/CreatePayment"}


def test_health_and_reflection_answer_any_member(payments, tls_config):
    channel = channel_as(tls_config, "passengers", payments.port)
    health = health_pb2_grpc.HealthStub(channel)

    response = payments.call(health.Check(health_pb2.HealthCheckRequest(service=SERVICE)))

    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_the_mesh_client_presents_the_callers_own_identity(payments, tls_config):
    config = with_port(tls_config, "payments", payments.port)
    as_trips, as_passengers = Clients(config, caller="trips"), Clients(config, caller="passengers")
    try:
        trips_failure = payments.fail(
            as_trips.stub(payments_pb2_grpc.PaymentServiceStub).CreatePayment(
                payments_pb2.CreatePaymentRequest()
            )
        )
        passengers_failure = payments.fail(
            as_passengers.stub(payments_pb2_grpc.PaymentServiceStub).CreatePayment(
                payments_pb2.CreatePaymentRequest()
            )
        )
    finally:
        payments.call(as_trips.close())
        payments.call(as_passengers.close())

    assert trips_failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert passengers_failure.code == grpc.StatusCode.PERMISSION_DENIED


def test_a_plaintext_client_cannot_connect(payments):
    stub = payments_pb2_grpc.PaymentServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{payments.port}"))

    failure = payments.fail(stub.ListPayments(payments_pb2.ListPaymentsRequest(), timeout=5))

    assert failure.code == grpc.StatusCode.UNAVAILABLE


def test_a_client_with_a_certificate_from_another_ca_cannot_connect(payments, tls_config, tmp_path):
    (tmp_path / "other").mkdir()
    other = config_of(tmp_path / "other")
    certs.ensure(other)
    foreign = identity.load(other, "trips")
    ours = identity.load(tls_config, "trips")
    # It trusts our CA (so it would accept the server) but presents a certificate the server can't verify.
    credentials = grpc.ssl_channel_credentials(ours.ca, foreign.key, foreign.cert)
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{payments.port}", credentials, options=identity.channel_options(tls_config, "payments")
    )

    failure = payments.fail(
        payments_pb2_grpc.PaymentServiceStub(channel).ListPayments(
            payments_pb2.ListPaymentsRequest(), timeout=5
        )
    )

    assert failure.code == grpc.StatusCode.UNAVAILABLE


def test_a_client_refuses_a_server_that_is_not_the_member_it_called(payments, tls_config):
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{payments.port}",
        identity.channel_credentials(tls_config, "trips"),
        options=identity.channel_options(
            tls_config, "passengers"
        ),  # dialled payments' port, expects passengers
    )

    failure = payments.fail(
        payments_pb2_grpc.PaymentServiceStub(channel).ListPayments(
            payments_pb2.ListPaymentsRequest(), timeout=5
        )
    )

    assert failure.code == grpc.StatusCode.UNAVAILABLE
