"""`mesh gateway --upstream` in front of a TLS server: the mesh's passengers service with `[tls] enabled`.

The backend demands a client certificate from the mesh's CA (certs.py made
them in a temporary directory). The bridge reaches it with the files given on
the command line, or by default with the mesh's own CA and gateway identity;
without a client certificate, with another CA or another server name it is
refused, and bad options are one clear line.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.gateway import upstream_tls
from services.gateway.api import ApiError
from services.gateway.server import Options
from services.mesh import certs
from services.runtime.config import MeshConfig, load_config
from services.runtime.errors import ConfigError
from services.runtime.server import create_server

from . import harness

MESH = Path(sys.executable).parent / "mesh"
DESCRIPTORS = Path(__file__).parents[2] / "generated" / "rideshare" / "descriptors.binpb"


def tls_mesh(directory: Path, certs_dir: Path) -> MeshConfig:
    text = f'\n[tls]\nenabled = true\ndir = "{certs_dir}"\n'
    path = harness.write_gateway_mesh(directory)
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")
    return load_config(path, env={})


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> tuple[MeshConfig, Path]:
    root = tmp_path_factory.mktemp("tls")
    config = tls_mesh(root, root / "certs")
    certs.ensure(config)
    return config, root / "certs"


@pytest.fixture(scope="module")
def backend(background: harness.BackgroundLoop, secured: tuple[MeshConfig, Path]) -> Iterator[str]:
    server = background.run(create_server(secured[0], "passengers", port=0))
    port = background.run(server.start())
    yield f"127.0.0.1:{port}"
    background.run(server.stop(0))


def with_files(folder: Path, **extra: object) -> Options:
    return Options(
        auth=False,
        upstream_ca=str(folder / "ca.pem"),
        upstream_cert=str(folder / "gateway.pem"),
        upstream_key=str(folder / "gateway.key"),
        **extra,  # type: ignore[arg-type]
    )


def test_the_bridge_fronts_a_tls_server_with_the_files_given(background, gateway_mesh, secured, backend):
    options = with_files(secured[1], upstreams=[backend])
    running = background.run(harness.start_gateway(gateway_mesh, options))  # a mesh file without TLS
    try:
        created = running.request(
            "POST", "/v1/passengers", {"displayName": "Ada", "email": "ada@example.com"}
        )
        assert created.status == 200, created.json
        assert running.request("GET", f"/v1/{created.json['name']}").json == created.json
        assert running.request("GET", "/healthz").json["upstreams"] == {backend: "SERVING"}
    finally:
        background.run(running.stop())


def test_in_a_tls_mesh_the_bridge_uses_the_mesh_ca_and_its_own_identity(background, secured, backend):
    running = background.run(harness.start_gateway(secured[0], Options(upstreams=[backend], auth=False)))
    try:
        missing = running.request("GET", "/v1/passengers/0123456789abcdef0123456789abcdef")
        assert (missing.status, missing.json["details"][0]["reason"]) == (404, "PASSENGER_NOT_FOUND")
    finally:
        background.run(running.stop())


def test_without_a_client_certificate_the_server_refuses_the_bridge(
    background, gateway_mesh, secured, backend
):
    options = Options(upstreams=[backend], auth=False, upstream_ca=str(secured[1] / "ca.pem"))
    with pytest.raises(ApiError, match="server reflection failed: UNAVAILABLE"):
        background.run(harness.start_gateway(gateway_mesh, options))


def refused(background: harness.BackgroundLoop, config: MeshConfig, options: Options) -> dict[str, Any]:
    """What a client of the bridge gets when the upstream's TLS handshake fails (routes from the
    descriptor set, so the bridge starts without asking the upstream anything)."""
    options = dataclasses.replace(options, auth=False, descriptor_set=str(DESCRIPTORS))
    running = background.run(harness.start_gateway(config, options))
    try:
        response = running.request("GET", "/v1/passengers/0123456789abcdef0123456789abcdef")
        assert response.status == 503, response.json
        found: dict[str, Any] = response.json
        return found
    finally:
        background.run(running.stop())


def test_another_ca_or_another_server_name_is_unavailable_and_says_why(
    background, gateway_mesh, secured, backend, tmp_path
):
    other = tls_mesh(tmp_path, tmp_path / "other-certs")
    certs.ensure(other)  # another CA altogether
    theirs = with_files(tmp_path / "other-certs", upstreams=[backend])
    wrong_ca = refused(background, gateway_mesh, theirs)
    assert wrong_ca["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "CERTIFICATE_VERIFY_FAILED" in wrong_ca["message"], wrong_ca

    mine = with_files(secured[1], upstreams=[backend], upstream_server_name="billing.example")
    wrong_name = refused(background, gateway_mesh, mine)
    assert wrong_name["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "Hostname Verification Check failed" in wrong_name["message"], wrong_name


@pytest.mark.parametrize(
    ("options", "option", "problem"),
    [
        ({"cert": "x.pem"}, "--upstream-cert", "go together"),
        ({"server_name": "a.example"}, "--upstream-server-name", "is for TLS"),
        ({"ca": "/nonexistent/ca.pem"}, "--upstream-ca", "cannot read"),
    ],
)
def test_bad_tls_options_are_a_config_error_naming_the_option(gateway_mesh, options, option, problem):
    with pytest.raises(ConfigError, match=problem) as caught:
        upstream_tls.settings(gateway_mesh, **options)
    assert option in str(caught.value)


def test_a_file_that_is_not_a_certificate_is_named(gateway_mesh, tmp_path):
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="--upstream-ca"):
        upstream_tls.settings(gateway_mesh, ca=str(junk))


def test_a_key_that_is_not_the_certificates_is_named(gateway_mesh, secured):
    folder = secured[1]
    with pytest.raises(ConfigError, match=r"--upstream-cert.*the key does not match"):
        upstream_tls.settings(
            gateway_mesh, cert=str(folder / "gateway.pem"), key=str(folder / "passengers.key")
        )


def test_mesh_gateway_with_a_bad_option_exits_2_with_one_line(tmp_path):
    done = subprocess.run(
        [
            str(MESH),
            "gateway",
            "--config",
            str(harness.write_gateway_mesh(tmp_path)),
            "--upstream",
            "127.0.0.1:1",
            "--upstream-key",
            "k.pem",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--upstream-cert and --upstream-key go together" in done.stderr
    assert "Traceback" not in done.stderr
