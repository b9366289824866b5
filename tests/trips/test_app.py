"""Wiring: settings are checked at start, and the background tasks live and die with the server."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.config import load_config
from services.runtime.errors import ConfigError
from services.runtime.server import create_server

from ..whole_mesh import SERVICES, mesh_text


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("search_radius_meters", "0"),
        ("search_radius_meters", "50001"),
        ("matching_timeout_seconds", "-1"),
        ("outbox_max_backoff_seconds", '"soon"'),
    ],
)
def test_a_bad_setting_stops_the_service_naming_the_key(tmp_path, setting, value):
    text = mesh_text(dict.fromkeys(SERVICES, 0)).replace(f"{setting} = ", f"{setting} = {value} #")
    path = tmp_path / "mesh.toml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path, env={})

    with pytest.raises(ConfigError, match=f"services.trips.settings.{setting}"):
        asyncio.run(create_server(config, "trips", port=0))


def test_stopping_the_server_stops_its_background_tasks(tmp_path):
    path = tmp_path / "mesh.toml"
    path.write_text(mesh_text(dict.fromkeys(SERVICES, 0)), encoding="utf-8")
    config = load_config(path, env={})

    async def scenario() -> set[str]:
        server = await create_server(config, "trips", port=0)
        await server.start()
        running = {t.get_name() for t in asyncio.all_tasks()}
        assert {"trips-outbox", "trips-janitor"} <= running
        await server.stop(0)
        return {t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(scenario()) & {"trips-outbox", "trips-janitor"} == set()
