"""`mesh up` runs the gateway after the services when the mesh file has `[gateway]`; status shows it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from ..e2e.conftest import FREE_PORT, MeshFactory

pytestmark = pytest.mark.e2e


@pytest.fixture
def mesh_factory(tmp_path_factory):
    factory = MeshFactory(tmp_path_factory)
    yield factory
    for mesh in factory.made:
        mesh.stop(check=False)


def test_mesh_up_starts_the_gateway_and_status_reports_it(mesh_factory):
    mesh = mesh_factory(("passengers",), gateway={"port": FREE_PORT})
    mesh.start(only=("passengers", "gateway"))
    gateway_port = mesh.document["gateway"]["port"]

    code, members = mesh.status()
    assert code == 0
    assert [(m["service"], m["health"]) for m in members] == [
        ("passengers", "SERVING"),
        ("gateway", "SERVING"),
    ]
    assert members[1]["address"] == f"127.0.0.1:{gateway_port}"
    assert isinstance(members[1]["pid"], int)
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway_port}/healthz", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "SERVING", "upstreams": {"passengers": "SERVING"}}

    # the gateway `mesh up` runs wants API keys; one made with `mesh keys` works at once, and a
    # passenger signs in with the signing key `mesh up` made
    assert request(gateway_port, "GET", "/v1/passengers")[0] == 401
    created = mesh.mesh("keys", "create", "e2e", "--scopes", "rides")
    assert created.code == 0, created.err
    key = created.out.strip()
    account = {"email": "a@example.com", "password": "ada's password"}
    status, body = request(gateway_port, "POST", "/v1/passengers", {"displayName": "Ada", **account}, key)
    assert status == 200
    assert request(gateway_port, "GET", f"/v1/{body['name']}", key=key)[0] == 401  # for nobody: sign in
    status, session = request(gateway_port, "POST", "/v1/passengers:signIn", account, key)
    assert status == 200
    token = session["accessToken"]
    assert request(gateway_port, "GET", f"/v1/{body['name']}", key=key, token=token) == (200, body)

    assert mesh.stop() == 0
    _, members = mesh.status()
    assert [(m["service"], m["health"]) for m in members] == [("passengers", "DOWN"), ("gateway", "DOWN")]


def request(port, method, path, body=None, key=None, token=None):
    """(status, JSON body) of one request to the gateway."""
    headers = {"content-type": "application/json"}
    if key:
        headers["x-api-key"] = key
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_without_a_gateway_table_mesh_up_runs_no_gateway(mesh_factory):
    mesh = mesh_factory(("passengers",))
    mesh.start()

    _, members = mesh.status()
    assert [m["service"] for m in members] == ["passengers"]
