"""`[telemetry]` and the admin ports in mesh.toml: defaults, replicas, and a precise error for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.mesh.stats import targets
from services.runtime.config import load_config
from services.runtime.errors import ConfigError
from services.runtime.telemetry import admin_port, admin_tls, gateway_admin_port

from ..conftest import write_mesh_file

TWO = "[services.passengers]\nport = 6000\n\n[services.drivers]\nport = 6001\n"


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    return load_config(write_mesh_file(tmp_path, text), env=env or {})


def test_metrics_and_file_traces_are_on_by_default(tmp_path):
    config = load(tmp_path, TWO)

    assert config.telemetry.metrics is True
    assert config.telemetry.traces == "file"
    assert config.telemetry.sample_ratio == 0.01
    assert config.telemetry.otlp_endpoint is None
    assert config.service("passengers").admin_port == 7000
    assert config.service("drivers").admin_port == 7001


def test_an_admin_port_can_be_set_per_service_or_turned_off(tmp_path):
    config = load(
        tmp_path,
        TWO + "admin_port = 0\n[services.billing]\nport = 6002\nadmin_port = 9100\n",
        env={"MESH_SERVICES__PASSENGERS__ADMIN_PORT": "9200"},
    )

    assert config.service("passengers").admin_port == 9200
    assert config.service("drivers").admin_port == 0
    assert config.service("billing").admin_port == 9100


def test_metrics_off_means_no_admin_ports(tmp_path):
    config = load(tmp_path, TWO + "[telemetry]\nmetrics = false\n")

    assert config.service("passengers").admin_port == 0


def test_a_service_on_a_free_port_has_no_derived_admin_port(tmp_path):
    config = load(tmp_path, "[services.passengers]\nport = 0\n")

    assert config.service("passengers").admin_port == 0


def test_replicas_keep_their_distance_between_grpc_and_admin_port(tmp_path):
    config = load(tmp_path, "[services.trips]\nport = 6003\nreplicas = 3\n")
    trips = config.service("trips")

    assert [admin_port(trips, trips.replica_port(k)) for k in range(3)] == [7003, 7013, 7023]
    assert admin_port(trips) == 7003
    assert admin_port(trips, 0) == 0  # a process told to pick any port


def test_the_gateway_admin_port_is_its_port_plus_the_offset(tmp_path):
    assert gateway_admin_port(load(tmp_path, TWO + "[gateway]\nport = 8080\n")) == 9080
    assert gateway_admin_port(load(tmp_path, TWO)) == 0  # no [gateway]


def test_an_otlp_endpoint_sends_traces_there(tmp_path):
    config = load(tmp_path, TWO + '[telemetry]\notlp_endpoint = "http://127.0.0.1:4317"\n')

    assert config.telemetry.traces == "otlp"
    assert config.telemetry.otlp_endpoint == "http://127.0.0.1:4317"


def test_with_tls_on_admin_ports_require_a_mesh_certificate_unless_told_otherwise(tmp_path):
    tls = TWO + "[gateway]\nport = 8080\n[tls]\nenabled = true\n"
    on, plain = load(tmp_path, tls), load(tmp_path, tls + '[telemetry]\nadmin_auth = "none"\n')

    assert admin_tls(on)
    assert not admin_tls(plain)
    assert not admin_tls(load(tmp_path, TWO))
    assert [t.url for t in targets(on)] == [
        "https://127.0.0.1:7000/metrics",
        "https://127.0.0.1:7001/metrics",
        "https://127.0.0.1:9080/metrics",
    ]
    assert {t.url.split(":")[0] for t in targets(plain)} == {"http"}


def test_admin_ports_on_every_address_are_reached_on_this_machine(tmp_path):
    text = 'host = "0.0.0.0"\n' + TWO + '[telemetry]\nadmin_host = "0.0.0.0"\n'

    assert [t.url for t in targets(load(tmp_path, text))] == [
        "http://127.0.0.1:7000/metrics",
        "http://127.0.0.1:7001/metrics",
    ]


BAD_INPUT = [
    pytest.param(
        TWO + '[telemetry]\ntraces = "jaeger"\n', {}, "telemetry.traces", "off, file, otlp", id="traces"
    ),
    pytest.param(
        TWO + '[telemetry]\ntraces = "otlp"\n',
        {},
        "telemetry.otlp_endpoint",
        "missing",
        id="otlp-no-endpoint",
    ),
    pytest.param(
        TWO + '[telemetry]\ntraces = "file"\notlp_endpoint = "http://x:4317"\n',
        {},
        "telemetry.otlp_endpoint",
        "only used with traces = 'otlp'",
        id="endpoint-not-used",
    ),
    pytest.param(
        TWO + '[telemetry]\notlp_endpoint = "127.0.0.1:4317"\n',
        {},
        "telemetry.otlp_endpoint",
        "URL",
        id="url",
    ),
    pytest.param(
        TWO + "[telemetry]\nsample_ratio = 2\n", {}, "telemetry.sample_ratio", "from 0 to 1", id="ratio-high"
    ),
    pytest.param(
        TWO + '[telemetry]\nadmin_auth = "mesh-identity"\n',
        {},
        "telemetry.admin_auth",
        "'mesh-identity' needs tls",
        id="identity-without-tls",
    ),
    pytest.param(
        TWO + '[telemetry]\nadmin_auth = "token"\n',
        {},
        "telemetry.admin_auth",
        "none, mesh-identity",
        id="auth",
    ),
    pytest.param(TWO + "[telemetry]\nmetrics = 1\n", {}, "telemetry.metrics", "true or false", id="metrics"),
    pytest.param(
        TWO + "[telemetry]\nmetric = true\n", {}, "telemetry.metric", "did you mean 'metrics'", id="typo"
    ),
    pytest.param(
        TWO + "admin_port = 6000\n",
        {},
        "services.drivers.admin_port",
        "used by services.passengers.port",
        id="clash",
    ),
    pytest.param(
        TWO,
        {"MESH_SERVICES__DRIVERS__ADMIN_PORT": "7000"},
        "services.drivers.admin_port",
        "already used",
        id="env",
    ),
    pytest.param(
        "[services.passengers]\nport = 6000\n[services.drivers]\nport = 7000\n",
        {},
        "services.passengers.admin_port",
        "admin port 7000 is already used by services.drivers.port",
        id="derived-clash",
    ),
    pytest.param(
        "[services.passengers]\nport = 7000\nreplicas = 2\nadmin_port = 7010\n",
        {},
        "services.passengers.admin_port",
        "admin port 7010 is already used by services.passengers (replica 1: port + 1 * replica_port_step)",
        id="own-replica",
    ),
    pytest.param(
        "[services.passengers]\nport = 65000\n",
        {},
        "services.passengers.admin_port",
        "above 65535",
        id="too-high",
    ),
    pytest.param(
        TWO + "[telemetry]\nadmin_port_offset = -1\n",
        {},
        "telemetry.admin_port_offset",
        "0 to 65535",
        id="offset",
    ),
]


@pytest.mark.parametrize(("text", "env", "key", "problem"), BAD_INPUT)
def test_bad_input_names_the_key_and_problem(tmp_path, text, env, key, problem):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)

    assert caught.value.key == key
    assert problem in caught.value.problem
