"""API keys and rate limits: the store, the token bucket, `mesh keys`, and 401/429 over HTTP."""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.gateway.guard import TokenBuckets
from services.gateway.keys import KeyProblem, KeyStore, database_path
from services.gateway.server import Options
from services.runtime.config import load_config

from . import harness

MESH = Path(sys.executable).parent / "mesh"


@pytest.fixture
def store(gateway_mesh, tmp_path):
    import dataclasses

    opened = KeyStore.open(dataclasses.replace(gateway_mesh, data_dir=tmp_path))
    yield opened
    opened.close()


def test_a_created_key_is_found_and_only_its_hash_is_stored(store):
    record, key = store.create("dev")

    assert key.startswith("rk_")
    assert len(key) > 40
    assert record.shown_prefix == key[:10]
    assert store.find(key) == record
    assert store.find(key + "x") is None
    assert key.encode() not in store.database.path.read_bytes()


def test_a_revoked_key_is_refused_and_names_stay_unique(store):
    _, key = store.create("ci", requests_per_second=2.0, burst=3)
    revoked = store.revoke("ci")

    assert not revoked.active
    assert store.find(key) is None
    assert [(k.name, k.active, k.requests_per_second, k.burst) for k in store.list()] == [
        ("ci", False, 2.0, 3)
    ]
    with pytest.raises(KeyProblem, match="already exists"):
        store.create("ci")
    with pytest.raises(KeyProblem, match="no key named"):
        store.revoke("nobody")


def test_a_token_bucket_allows_the_burst_then_the_rate():
    buckets = TokenBuckets()

    assert [buckets.take("k", rate=2.0, burst=3, now=10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k", rate=2.0, burst=3, now=10.0) == pytest.approx(0.5)
    assert buckets.take("k", rate=2.0, burst=3, now=10.5) == 0.0
    assert buckets.take("k", rate=2.0, burst=3, now=100.0) == 0.0  # refilled, but never past the burst
    assert buckets.take("other", rate=2.0, burst=1, now=10.0) == 0.0


def test_mesh_keys_create_list_revoke(tmp_path):
    config = harness.write_gateway_mesh(tmp_path)
    mesh = functools.partial(mesh_keys, config)

    created = mesh("create", "dev", "--rate", "5", "--burst", "7")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("rk_")
    assert "shown only this once" in created.stderr
    listed = mesh("list")
    assert "dev" in listed.stdout
    assert "5/s burst 7" in listed.stdout
    assert key not in listed.stdout
    assert mesh("create", "dev").returncode == 1
    assert mesh("revoke", "dev").returncode == 0
    assert '"revoke_time": null' not in mesh("list", "--json").stdout
    opened = KeyStore.open(load_config(config, env={}))
    try:
        assert opened.find(key) is None
    finally:
        opened.close()
    assert database_path(load_config(config, env={})).exists()


def mesh_keys(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`mesh keys ARGS --config CONFIG`, as an operator runs it."""
    return subprocess.run(
        [str(MESH), "keys", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def secured(background, gateway_mesh, kitchen, descriptor_set):
    """The Kitchen behind a gateway that wants API keys, with a key store of its own."""
    options = Options(upstreams=[kitchen.address], descriptor_set=str(descriptor_set), auth=True)
    running = background.run(harness.start_gateway(gateway_mesh, options))
    keys = KeyStore.open(gateway_mesh)
    yield running, keys
    keys.close()
    background.run(running.stop())


def test_a_missing_or_unknown_key_is_a_401(secured):
    gateway, _ = secured
    for headers, path, reason in (
        ({}, "/v1/things/a", "API_KEY_MISSING"),
        ({"x-api-key": "rk_nope"}, "/v1/things/a", "API_KEY_INVALID"),
        ({}, "/v1/things/a?key=rk_nope", "API_KEY_INVALID"),
    ):
        response = gateway.request("GET", path, headers=headers)
        assert response.status == 401
        body = response.json
        assert body["code"] == 16
        assert body["details"][0]["reason"] == reason


def test_a_key_in_the_header_or_the_query_is_accepted_and_not_passed_on(secured):
    gateway, keys = secured
    _, key = keys.create("reader")

    by_header = gateway.request("GET", "/v1/echo/e1", headers={"x-api-key": key})
    by_query = gateway.request("GET", f"/v1/echo/e1?key={key}")

    assert by_header.status == by_query.status == 200
    assert by_header.header("grpc-metadata-seen-x-api-key") is None
    assert "key" not in by_query.json


def test_past_its_burst_a_key_gets_429_with_retry_after(secured):
    gateway, keys = secured
    _, key = keys.create("slow", requests_per_second=0.01, burst=2)

    statuses = [gateway.request("GET", "/v1/things/a", headers={"x-api-key": key}).status for _ in range(2)]
    limited = gateway.request("GET", "/v1/things/a", headers={"x-api-key": key})

    assert statuses == [200, 200]
    assert limited.status == 429
    assert int(limited.header("retry-after")) >= 1
    assert (limited.json["code"], limited.json["details"][0]["reason"]) == (8, "RATE_LIMITED")


def test_a_key_revoked_elsewhere_stops_working(secured, background):
    gateway, keys = secured
    _, key = keys.create("leaked")
    assert gateway.request("GET", "/v1/things/a", headers={"x-api-key": key}).status == 200

    keys.revoke("leaked")
    statuses = []
    for _ in range(300):  # the gateway looks for changes to its keys every 0.1 s
        statuses.append(gateway.request("GET", "/v1/things/a", headers={"x-api-key": key}).status)
        if statuses[-1] == 401:
            break
        background.run(_sleep(0.02))
    assert statuses[-1] == 401


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def test_health_documents_and_preflights_need_no_key(secured):
    gateway, _ = secured

    assert gateway.request("GET", "/healthz").status == 200
    assert gateway.request("GET", "/openapi.json").json["security"][:2] == [
        {"ApiKeyHeader": []},
        {"ApiKeyQuery": []},
    ]
    assert gateway.request("GET", "/docs").status == 200
    preflight = gateway.request(
        "OPTIONS",
        "/v1/things/a",
        headers={"origin": "https://app.example", "access-control-request-method": "GET"},
    )
    assert preflight.status == 204


def test_limits_scopes_and_expiry_are_checked_when_a_key_is_made(store):
    bad = [(-5, None, "--rate"), (0, None, "--rate"), (1e9, None, "--rate")]
    bad += [(None, -3, "--burst"), (None, 0, "--burst")]
    for rate, burst, problem in bad:
        with pytest.raises(KeyProblem, match=problem):
            store.create(f"k{rate}{burst}", requests_per_second=rate, burst=burst)
    with pytest.raises(KeyProblem, match="unknown scope 'root'"):
        store.create("root", scopes=frozenset({"root"}))
    with pytest.raises(KeyProblem, match="expire before"):
        store.create("late", expire_time=1)
    assert store.list() == []


def test_an_expired_key_is_refused_and_listed_as_expired(store, monkeypatch):
    import time

    record, key = store.create("temp", scopes=frozenset({"rides"}), expire_time=time.time_ns() + 60 * 10**9)
    assert store.find(key) == record
    assert record.labels == {"RIDES"}

    later = time.time_ns() + 61 * 10**9
    monkeypatch.setattr(time, "time_ns", lambda: later)
    assert store.find(key) is None
    [listed] = store.list()
    assert listed.expired(later)


def test_last_use_is_written_in_batches_and_shown(store):
    _, key = store.create("busy")
    assert store.list()[0].last_used_time is None

    store.find(key)
    store.flush()

    assert store.list()[0].last_used_time is not None


def test_mesh_keys_refuses_bad_limits_and_shows_scopes_and_expiry(tmp_path):
    config = harness.write_gateway_mesh(tmp_path)
    mesh = functools.partial(mesh_keys, config)

    for args in (["--rate", "-5"], ["--burst", "-3"], ["--scopes", "root"], ["--expires", "soon"]):
        refused = mesh("create", "bad", *args)
        assert refused.returncode == 2, args
        assert refused.stderr.startswith("mesh keys create: "), refused.stderr
    made = mesh("create", "ops", "--scopes", "admin", "--expires", "30d")
    assert made.returncode == 0, made.stderr
    assert "scopes admin" in made.stderr
    listed = mesh("list", "--json").stdout
    import json

    [entry] = json.loads(listed)
    assert (entry["name"], entry["scopes"], entry["last_used_time"]) == ("ops", ["admin"], None)
    assert entry["expire_time"].startswith(time.strftime("%Y", time.gmtime(time.time() + 30 * 86400)))


def test_rate_limits_are_per_gateway_process(secured, background, gateway_mesh, kitchen, descriptor_set):
    """Documented: each gateway keeps its own buckets, so N gateways allow N times a key's rate."""
    gateway, keys = secured
    _, key = keys.create("twice", requests_per_second=0.01, burst=1)
    options = Options(upstreams=[kitchen.address], descriptor_set=str(descriptor_set), auth=True)
    other = background.run(harness.start_gateway(gateway_mesh, options))
    try:
        first = [
            g.request("GET", "/v1/things/a", headers={"x-api-key": key}).status for g in (gateway, other)
        ]
        second = [
            g.request("GET", "/v1/things/a", headers={"x-api-key": key}).status for g in (gateway, other)
        ]
    finally:
        background.run(other.stop())
    assert (first, second) == ([200, 200], [429, 429])


def test_the_development_key_is_kept_and_has_every_scope(tmp_path):
    from services.gateway.keys import SCOPES, development_key

    config = load_config(harness.write_gateway_mesh(tmp_path), env={})
    key = development_key(config)

    assert development_key(config) == key  # the same across restarts
    opened = KeyStore.open(config)
    try:
        record = opened.find(key)
        assert record is not None
        assert record.scopes == set(SCOPES)
    finally:
        opened.close()
