"""Shared fixtures: the test contract compiled to a descriptor set, and the API and routes built from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.gateway import api as api_module
from services.gateway import routes
from services.gateway.server import Options
from services.runtime.config import MeshConfig, load_config
from services.runtime.server import create_server

from ..conftest import with_port
from . import harness

PROTOS = Path(__file__).parent / "protos"
TEST_PROTO = "gatewaytest/v1/gatewaytest.proto"


def compile_descriptor_set(out: Path) -> Path:
    """protoc (grpc_tools) the test contract into a FileDescriptorSet with imports and comments."""
    import grpc_tools
    from grpc_tools import protoc

    tools_include = Path(grpc_tools.__file__).parent / "_proto"
    import google.api

    site = Path(google.api.__path__[0]).parent.parent
    code = protoc.main(
        [
            "protoc",
            f"-I{PROTOS}",
            f"-I{site}",
            f"-I{tools_include}",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            TEST_PROTO,
        ]
    )
    assert code == 0, "protoc failed on the test contract"
    return out


@pytest.fixture(scope="session")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_descriptor_set(tmp_path_factory.mktemp("protos") / "gatewaytest.binpb")


@pytest.fixture(scope="session")
def test_api(descriptor_set: Path) -> api_module.Api:
    return api_module.from_descriptor_set(descriptor_set)


@pytest.fixture(scope="session")
def table(test_api: api_module.Api) -> routes.RouteTable:
    built = routes.build(test_api)
    assert built.problems == [], built.problems
    return built


@pytest.fixture(scope="module")
def background() -> Iterator[harness.BackgroundLoop]:
    loop = harness.BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def gateway_mesh(tmp_path_factory: pytest.TempPathFactory) -> MeshConfig:
    return load_config(harness.write_gateway_mesh(tmp_path_factory.mktemp("mesh")), env={})


@pytest.fixture(scope="module")
def kitchen(background: harness.BackgroundLoop, test_api: api_module.Api) -> Iterator[harness.Kitchen]:
    running = background.run(harness.start_kitchen(test_api))
    yield running
    background.run(running.server.stop(0))


@pytest.fixture(scope="module")
def kitchen_gateway(
    background: harness.BackgroundLoop,
    gateway_mesh: MeshConfig,
    kitchen: harness.Kitchen,
    descriptor_set: Path,
) -> Iterator[harness.RunningGateway]:
    """The gateway in front of the Kitchen, routes from the descriptor set, no API keys."""
    options = Options(upstreams=[kitchen.address], descriptor_set=str(descriptor_set), auth=False)
    running = background.run(harness.start_gateway(gateway_mesh, options))
    yield running
    background.run(running.stop())


@pytest.fixture(scope="module")
def passengers_gateway(
    background: harness.BackgroundLoop, gateway_mesh: MeshConfig
) -> Iterator[harness.RunningGateway]:
    """A real passenger service (in-process MeshServer) behind the gateway in mesh mode,
    called with an API key of the admin scope (listing passengers is an operator's method)."""
    backend = background.run(create_server(gateway_mesh, "passengers", port=0))
    port = background.run(backend.start())
    config = with_port(gateway_mesh, "passengers", port)
    running = background.run(harness.start_gateway(config, Options()))
    running.key = running.new_key("operator", frozenset({"admin"}))
    yield running
    background.run(running.stop())
    background.run(backend.stop(0))
