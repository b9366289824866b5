"""The `[gateway]` table of the mesh file: defaults, values, environment overrides, errors naming the key."""

from __future__ import annotations

import pytest

from services.runtime.config import load_config
from services.runtime.errors import ConfigError

from ..conftest import write_mesh_file

SERVICES = "[services.passengers]\nport = 6000\n"


def load(tmp_path, text, env=None):
    return load_config(write_mesh_file(tmp_path, SERVICES + text), env=env or {})


def test_without_a_gateway_table_the_gateway_is_off_with_defaults(tmp_path):
    gateway = load(tmp_path, "").gateway

    assert not gateway.enabled
    assert (gateway.address, gateway.max_body_bytes, gateway.max_timeout) == ("127.0.0.1:8080", 1048576, 60.0)
    assert gateway.cors_origins == ()
    assert gateway.sse_keepalive == 15.0
    assert (gateway.rate_limit.requests_per_second, gateway.rate_limit.burst) == (10.0, 20)
    assert (gateway.max_header_bytes, gateway.max_url_bytes) == (65536, 8192)
    assert (gateway.header_timeout, gateway.body_timeout, gateway.idle_timeout) == (10.0, 30.0, 5.0)
    assert (gateway.max_connections, gateway.max_in_flight, gateway.max_queue_wait) == (1000, 24, 0.05)
    assert gateway.max_streams_per_key == 100


def test_the_limits_of_the_repository_mesh_file_are_the_defaults():
    """mesh.toml documents every limit with its default value: the two must not drift apart."""
    from pathlib import Path

    from services.runtime.config import GatewayConfig

    written = load_config(Path(__file__).parents[2] / "mesh.toml", env={}).gateway
    default = GatewayConfig()
    for key in (
        "max_header_bytes", "max_url_bytes", "header_timeout", "body_timeout", "idle_timeout",
        "max_connections", "max_in_flight", "max_queue_wait", "max_streams_per_key",
    ):  # fmt: skip
        assert getattr(written, key) == getattr(default, key), key


def test_a_gateway_table_turns_it_on_with_its_values(tmp_path):
    gateway = load(
        tmp_path,
        '[gateway]\nhost = "0.0.0.0"\nport = 9000\nmax_body_bytes = 2048\nmax_timeout = "2m"\n'
        'cors_origins = ["https://a.example", "https://b.example"]\nsse_keepalive = "0s"\n'
        "[gateway.rate_limit]\nrequests_per_second = 0.5\nburst = 3\n",
    ).gateway

    assert gateway.enabled
    assert gateway.address == "0.0.0.0:9000"
    assert (gateway.max_body_bytes, gateway.max_timeout) == (2048, 120.0)
    assert gateway.cors_origins == ("https://a.example", "https://b.example")
    assert gateway.sse_keepalive == 0.0
    assert (gateway.rate_limit.requests_per_second, gateway.rate_limit.burst) == (0.5, 3)


def test_the_environment_overrides_gateway_keys(tmp_path):
    gateway = load(
        tmp_path,
        "[gateway]\n",
        {"MESH_GATEWAY__PORT": "9100", "MESH_GATEWAY__CORS_ORIGINS": "https://a.example, *"},
    ).gateway

    assert gateway.port == 9100
    assert gateway.cors_origins == ("https://a.example", "*")
    assert load(tmp_path, "[gateway]\n", {"MESH_GATEWAY__CORS_ORIGINS": ""}).gateway.cors_origins == ()


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[gateway]\nport = 70000\n", "gateway.port", "expected an integer from 0 to 65535"),
        ("[gateway]\nport = 6000\n", "gateway.port", "already used by services.passengers"),
        ("[gateway]\nmax_body_bytes = 0\n", "gateway.max_body_bytes", "expected an integer"),
        ('[gateway]\nmax_timeout = "soon"\n', "gateway.max_timeout", "positive duration"),
        ("[gateway]\ncors_origins = [1]\n", "gateway.cors_origins", "list of non-empty strings"),
        ('[gateway]\nsse_keepalive = "-5s"\n', "gateway.sse_keepalive", "positive duration"),
        ("[gateway]\nprot = 1\n", "gateway.prot", "did you mean 'port'"),
        ("[gateway]\nmax_header_bytes = 100\n", "gateway.max_header_bytes", "expected an integer"),
        ('[gateway]\nheader_timeout = "0s"\n', "gateway.header_timeout", "positive duration"),
        ("[gateway]\nmax_connections = 0\n", "gateway.max_connections", "expected an integer"),
        ("[gateway]\nmax_in_flight = -1\n", "gateway.max_in_flight", "expected an integer"),
        ('[gateway]\nmax_queue_wait = "-1s"\n', "gateway.max_queue_wait", "positive duration"),
        ("[gateway]\nmax_streams_per_key = 0\n", "gateway.max_streams_per_key", "expected an integer"),
        ("[gateway.rate_limit]\nburst = 0\n", "gateway.rate_limit.burst", "expected an integer"),
        (
            "[gateway.rate_limit]\nrequests_per_second = -1\n",
            "gateway.rate_limit.requests_per_second",
            "number",
        ),
    ],
)
def test_bad_gateway_values_fail_naming_the_key(tmp_path, text, key, problem):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)

    assert caught.value.key == key
    assert problem in caught.value.problem
