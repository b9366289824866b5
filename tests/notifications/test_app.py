"""Wiring: the stream queue size comes from the service's settings and is checked at start."""

from __future__ import annotations

import pytest

from services.runtime.config import load_config
from services.runtime.errors import ConfigError
from services.runtime.server import create_server
from tests.conftest import MESH_TOML, write_mesh_file


def test_a_stream_queue_size_below_one_is_a_config_error(tmp_path, loop):
    mesh = write_mesh_file(
        tmp_path, MESH_TOML + "\n[services.notifications]\nport = 0\nsettings = { stream_queue_size = 0 }\n"
    )

    with pytest.raises(ConfigError) as caught:
        loop.call(create_server(load_config(mesh, env={}), "notifications", port=0))

    assert caught.value.key == "services.notifications.settings.stream_queue_size"


def test_the_configured_queue_size_reaches_the_broker(notifications):
    assert notifications.broker.queue_size == 4
