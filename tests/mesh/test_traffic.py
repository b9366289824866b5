"""The client side of traffic: balancing, health checks, ejection, retry budget, per-method policies."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2
from rideshare.billing.v1 import billing_pb2
from rideshare.passengers.v1 import passengers_pb2 as pb
from rideshare.passengers.v1 import passengers_pb2_grpc

from services.runtime.client import Clients, _Propagate
from services.runtime.config import load_config
from services.runtime.errors import ConfigError
from services.runtime.server import Service
from services.runtime.traffic import check_methods, method_timeouts, service_config, timeout_of

from ..conftest import MESH_TOML, with_port, write_mesh_file

PASSENGERS = pb.DESCRIPTOR.services_by_name["PassengerService"]
BILLING = billing_pb2.DESCRIPTOR.services_by_name["BillingService"]
SOME_NAME = "passengers/" + "d" * 32


def config_with(tmp_path, text: str = "", env: dict[str, str] | None = None, client: str = ""):
    """The test mesh plus `text`; `client` adds keys to its [client] table."""
    base = MESH_TOML.replace("[client]\n", f"[client]\n{client}")
    return load_config(write_mesh_file(tmp_path, base + text), env=env or {})


def test_defaults_balance_health_check_and_eject(mesh_config):
    config = service_config(mesh_config, [PASSENGERS])

    [balancing] = config["loadBalancingConfig"]
    assert balancing == {
        "outlier_detection_experimental": {
            "interval": "0.250s",
            "baseEjectionTime": "10.000s",
            "maxEjectionPercent": 50,
            "failurePercentageEjection": {
                "threshold": 50,
                "enforcementPercentage": 100,
                "minimumHosts": 2,
                "requestVolume": 5,
            },
            "childPolicy": [{"round_robin": {}}],
        }
    }
    assert config["healthCheckConfig"] == {"serviceName": PASSENGERS.full_name}
    assert config["retryThrottling"] == {"maxTokens": 100, "tokenRatio": 0.1}


def test_the_client_table_sets_each_part(tmp_path):
    text = (
        "[client.retry_budget]\nmax_tokens = 20\ntoken_ratio = 0.5\n"
        '[client.outlier_detection]\ninterval = "250ms"\nbase_ejection_time = "1m"\n'
        "max_ejection_percent = 30\nfailure_threshold = 90\nrequest_volume = 3\n"
    )
    config = config_with(tmp_path, text, client="health_checks = false\n")

    built = service_config(config, [PASSENGERS])

    assert "healthCheckConfig" not in built
    assert built["retryThrottling"] == {"maxTokens": 20, "tokenRatio": 0.5}
    ejection = built["loadBalancingConfig"][0]["outlier_detection_experimental"]
    assert ejection["interval"] == "0.250s"
    assert ejection["baseEjectionTime"] == "60.000s"
    assert ejection["maxEjectionPercent"] == 30
    assert ejection["failurePercentageEjection"]["threshold"] == 90
    assert ejection["failurePercentageEjection"]["requestVolume"] == 3


def test_ejection_can_be_turned_off_leaving_plain_round_robin(tmp_path):
    config = config_with(tmp_path, "[client.outlier_detection]\nenabled = false\n")

    assert service_config(config, [PASSENGERS])["loadBalancingConfig"] == [{"round_robin": {}}]


def test_env_overrides_reach_the_client_table(tmp_path):
    config = config_with(
        tmp_path,
        env={"MESH_CLIENT__RETRY_BUDGET__MAX_TOKENS": "7", "MESH_CLIENT__HEALTH_CHECKS": "false"},
    )

    assert config.client.retry_budget.max_tokens == 7
    assert config.client.health_checks is False


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[client.retry_budget]\nmax_tokens = 0\n", "client.retry_budget.max_tokens", "1 to 1000"),
        ("[client.retry_budget]\ntoken_ratio = 2\n", "client.retry_budget.token_ratio", "0.001 to 1"),
        ("[client.outlier_detection]\nfailure_threshold = 101\n", "failure_threshold", "1 to 100"),
        ("[client.outlier_detection]\nintervall = '1s'\n", "intervall", "did you mean 'interval'"),
        ("[client.methods.x]\n", "client.methods", "package.Service"),
        ('[client.methods."billing/QuoteFare"]\ntimeout = "1s"\n', "billing/QuoteFare", "package.Service"),
        ('[client.methods."rideshare.billing.v1.BillingService"]\nretries = 1\n', "retries", "unknown key"),
    ],
)
def test_a_bad_client_key_is_refused_naming_it(tmp_path, text, key, problem):
    with pytest.raises(ConfigError) as caught:
        config_with(tmp_path, text)

    assert key in caught.value.key
    assert problem in caught.value.problem


def test_a_bad_client_flag_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError) as caught:
        config_with(tmp_path, client="health_checks = 'yes'\n")

    assert caught.value.key == "client.health_checks"
    assert "true or false" in caught.value.problem


METHODS = """
[client.methods."rideshare.billing.v1.BillingService/QuoteFare"]
timeout = "1s"
retry = false

[client.methods."rideshare.passengers.v1.PassengerService"]
timeout = "3s"
"""


def test_per_method_policies_set_timeouts_and_take_methods_out_of_retries(tmp_path):
    config = config_with(tmp_path, METHODS)

    retried = {
        (n["service"], n["method"]) for n in service_config(config, [BILLING])["methodConfig"][0]["name"]
    }
    timeouts = method_timeouts(config.client)

    assert (BILLING.full_name, "QuoteFare") not in retried
    assert (BILLING.full_name, "GetInvoice") in retried
    assert timeout_of(b"/rideshare.billing.v1.BillingService/QuoteFare", timeouts) == 1.0
    assert timeout_of("/rideshare.billing.v1.BillingService/GetInvoice", timeouts) is None
    assert timeout_of("/rideshare.passengers.v1.PassengerService/ListPassengers", timeouts) == 3.0
    check_methods(config)


@pytest.mark.parametrize(
    ("selector", "body", "problem"),
    [
        ("rideshare.billing.v1.BillingService/QuoteFair", 'timeout = "1s"', "did you mean 'QuoteFare'"),
        ("rideshare.nothing.v1.NothingService", 'timeout = "1s"', "no contract defines"),
        ("grpc.health.v1.Health/Check", "retry = true", "not safe to repeat"),
    ],
)
def test_method_policies_are_checked_against_the_contracts(tmp_path, selector, body, problem):
    config = config_with(tmp_path, f'[client.methods."{selector}"]\n{body}\n')

    with pytest.raises(ConfigError) as caught:
        Clients(config, caller="test")

    assert selector in caught.value.key
    assert problem in caught.value.problem


def test_a_method_timeout_replaces_the_mesh_default_but_not_the_callers_own():
    timeouts = {"/p.S/M": 1.5}
    propagate = _Propagate(20.0, timeouts=timeouts)
    mine = grpc.aio.ClientCallDetails("/p.S/M", None, None, None, None)
    theirs = grpc.aio.ClientCallDetails("/p.S/Other", None, None, None, None)
    explicit = grpc.aio.ClientCallDetails("/p.S/M", 9.0, None, None, None)

    assert propagate._details(mine, propagate._default(mine.method, 20.0)).timeout == 1.5
    assert propagate._details(theirs, propagate._default(theirs.method, 20.0)).timeout == 20.0
    assert propagate._details(explicit, propagate._default(explicit.method, 20.0)).timeout == 9.0


class Remembering(passengers_pb2_grpc.PassengerServiceServicer):
    def __init__(self) -> None:
        self.deadlines: list[float | None] = []

    async def GetPassenger(self, request, context):
        self.deadlines.append(context.time_remaining())
        return pb.Passenger(name=request.name)


def test_the_configured_service_config_is_accepted_by_grpcio_and_carries_calls(tmp_path, serve):
    config = config_with(tmp_path, METHODS)
    servicer = Remembering()
    server = serve(
        config=config,
        make=lambda runtime: [
            Service(PASSENGERS, servicer, passengers_pb2_grpc.add_PassengerServiceServicer_to_server)
        ],
    )
    clients = Clients(with_port(config, "passengers", server.port), caller="test")
    try:
        stub = clients.stub(passengers_pb2_grpc.PassengerServiceStub)
        assert server.call(stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME))).name == SOME_NAME
    finally:
        server.call(clients.close())

    [remaining] = servicer.deadlines
    assert remaining is not None
    assert remaining <= 3.0 * 1.01  # the PassengerService timeout of [client.methods], not the 20 s default


async def first_outcome(stub, want_ok: bool, attempts: int = 100) -> int:
    """Call until a call succeeds (`want_ok`) or fails; how many calls it took (bounded)."""
    for made in range(1, attempts + 1):
        code = grpc.StatusCode.OK
        try:
            await stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME), timeout=5)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
        if (code is grpc.StatusCode.OK) is want_ok:
            return made
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {'success' if want_ok else 'failure'} in {attempts} calls")


def test_a_backend_reporting_not_serving_gets_no_calls_until_it_serves_again(serve, mesh_config):
    servicer = Remembering()
    server = serve(
        make=lambda runtime: [
            Service(PASSENGERS, servicer, passengers_pb2_grpc.add_PassengerServiceServicer_to_server)
        ]
    )
    health = server.server.health
    clients = Clients(with_port(mesh_config, "passengers", server.port), caller="test")
    try:
        stub = clients.stub(passengers_pb2_grpc.PassengerServiceStub)
        server.call(first_outcome(stub, want_ok=True))
        server.call(health.set(PASSENGERS.full_name, health_pb2.HealthCheckResponse.NOT_SERVING))
        server.call(first_outcome(stub, want_ok=False))
        reached = len(servicer.deadlines)

        for _ in range(20):
            assert server.fail(stub.GetPassenger(pb.GetPassengerRequest(name=SOME_NAME))).code is (
                grpc.StatusCode.UNAVAILABLE
            )
        assert len(servicer.deadlines) == reached

        server.call(health.set(PASSENGERS.full_name, health_pb2.HealthCheckResponse.SERVING))
        server.call(first_outcome(stub, want_ok=True))
    finally:
        server.call(clients.close())
