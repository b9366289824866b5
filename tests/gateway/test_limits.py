"""What the bridge refuses when full (services/gateway/limits.py): unary calls past the in-flight cap,
streams past a key's cap. The queue itself on an event loop; its wiring and the stream cap over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.gateway.errors import HttpError
from services.gateway.limits import LAG_TICK, InFlight, LoopLag, Refusals, StreamCaps
from services.gateway.server import Options
from services.runtime.config import MeshConfig

from . import harness
from .test_http import error_of

# -- the in-flight queue ---------------------------------------------------------------------------------

NEW, CONTINUING = False, True
"""Whether a call continues work already admitted (its route names an existing resource)."""


def test_calls_past_the_cap_wait_their_turn_in_order():
    async def scenario() -> list[str]:
        gate = InFlight(limit=2, max_wait=30)
        assert gate.try_enter(NEW)
        assert gate.try_enter(NEW)
        assert not gate.try_enter(NEW)
        order: list[str] = []

        async def call(name: str) -> None:
            await gate.wait(None, NEW)
            order.append(name)

        waiters = [asyncio.ensure_future(call(name)) for name in ("first", "second")]
        await asyncio.sleep(0)  # both run until they wait
        assert gate.waiting == 2
        gate.leave(None)
        gate.leave(None)
        await asyncio.gather(*waiters)
        assert gate.busy == 2  # each slot went straight to a waiter
        gate.leave(None)
        gate.leave(None)
        assert gate.busy == 0
        return order

    assert asyncio.run(scenario()) == ["first", "second"]


def test_a_call_that_cannot_wait_is_refused_at_once_with_503_and_retry_after():
    async def scenario() -> HttpError:
        gate = InFlight(limit=1, max_wait=0.0)
        assert gate.try_enter(NEW)
        with pytest.raises(HttpError) as refused:
            await gate.wait(None, NEW)
        assert gate.waiting == 0
        return refused.value

    error = asyncio.run(scenario())
    assert (error.status, error.code, error.reason) == (503, 14, "OVERLOADED")
    assert error.headers == [(b"retry-after", b"1")]


def test_a_call_is_refused_at_once_when_the_wait_ahead_is_longer_than_its_deadline():
    async def scenario() -> None:
        gate = InFlight(limit=1, max_wait=30)
        assert gate.try_enter(NEW)
        gate.holding = 2.0  # calls have been holding their slot for 2 s
        with pytest.raises(HttpError):
            await gate.wait(1.0, NEW)  # the caller's deadline is 1 s away
        assert gate.waiting == 0

    asyncio.run(scenario())


def test_the_check_before_the_body_is_read_refuses_only_what_could_not_start_in_time():
    gate = InFlight(limit=1, max_wait=30)
    gate.check(0, NEW)  # a free slot: nothing to wait for
    assert gate.try_enter(NEW)
    gate.holding = 2.0
    with pytest.raises(HttpError):
        gate.check(1.0, NEW)
    gate.check(5.0, NEW)  # it may wait its turn
    assert gate.busy == 1  # a check takes no slot


def test_a_call_whose_wait_runs_out_is_refused():
    async def scenario() -> None:
        gate = InFlight(limit=1, max_wait=30)
        assert gate.try_enter(NEW)
        with pytest.raises(HttpError) as refused:
            await gate.wait(0.05, NEW)  # its deadline passes while it waits
        assert refused.value.status == 503
        assert gate.waiting == 0
        gate.leave(None)  # nobody waits any more: the slot is free
        assert gate.busy == 0

    asyncio.run(scenario())


def test_a_waiter_that_goes_away_just_after_its_turn_came_passes_the_slot_on():
    async def scenario() -> None:
        gate = InFlight(limit=1, max_wait=30)
        assert gate.try_enter(NEW)
        waiter = asyncio.ensure_future(gate.wait(None, NEW))
        await asyncio.sleep(0)  # it runs until it waits
        assert gate.waiting == 1
        gate.leave(None)  # its turn comes...
        waiter.cancel()  # ...but its client went away before it ran
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.busy == 0

    asyncio.run(scenario())


def test_stream_caps_count_per_owner():
    caps = StreamCaps(limit=2)
    caps.enter(["key a"])
    caps.enter(["key a", "user 1"])
    with pytest.raises(HttpError) as refused:
        caps.enter(["key a"])
    assert (refused.value.status, refused.value.reason) == (429, "TOO_MANY_STREAMS")
    caps.enter(["key b", "user 1"])
    with pytest.raises(HttpError):
        caps.enter(["key c", "user 1"])  # the user is at its cap, whatever key it uses
    assert caps.open == {"key a": 2, "key b": 1, "user 1": 2}
    caps.leave(["key a"])
    caps.enter(["key a"])
    for owners in (["key a"], ["key a", "user 1"], ["key b", "user 1"]):
        caps.leave(owners)
    assert caps.open == {}


def test_refusals_are_one_warning_at_once_then_counted_until_the_next_interval():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("rideshare.gateway")
    logger.addHandler(handler)
    try:
        refusals = Refusals("the test's limits")
        error = HttpError(503, grpc.StatusCode.UNAVAILABLE, "full", reason="OVERLOADED")
        for _ in range(5):
            refusals.count(error)
    finally:
        logger.removeHandler(handler)

    [line] = [r.getMessage() for r in records]
    assert line == "the test's limits refused since the last line: OVERLOADED 1"
    assert refusals.counts == {"OVERLOADED": 4}  # in the next line, ten seconds on


# -- over HTTP --------------------------------------------------------------------------------------------

STREAMS = 2


@pytest.fixture(scope="module")
def keyed_gateway(
    background: harness.BackgroundLoop,
    gateway_mesh: MeshConfig,
    kitchen: harness.Kitchen,
    descriptor_set: Path,
) -> Iterator[harness.RunningGateway]:
    """The Kitchen behind API keys, two streams per key, and no waiting for an in-flight slot."""
    config = harness.mesh_config(gateway_mesh, max_streams_per_key=STREAMS, max_queue_wait=0)
    options = Options(upstreams=[kitchen.address], descriptor_set=str(descriptor_set))
    running = background.run(harness.start_gateway(config, options))
    yield running
    background.run(running.stop())


@contextlib.contextmanager
def open_stream(port: int, key: str) -> Iterator[http.client.HTTPResponse]:
    """A long count stream, open once its first line came."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=harness.WAIT)
    try:
        connection.request("GET", "/v1/count/1000?interval=1s", headers={"x-api-key": key})
        response = connection.getresponse()
        if response.status == 200:
            assert json.loads(response.readline()) == {"result": {"n": 1}}
        yield response
    finally:
        connection.close()


def test_a_key_past_its_stream_cap_gets_429_with_retry_after_and_other_keys_do_not(keyed_gateway):
    mine, other = keyed_gateway.new_key("streamer"), keyed_gateway.new_key("neighbour")
    with contextlib.ExitStack() as streams:
        for _ in range(STREAMS):
            assert streams.enter_context(open_stream(keyed_gateway.port, mine)).status == 200
        refused = streams.enter_context(open_stream(keyed_gateway.port, mine))
        body = json.loads(refused.read())
        assert refused.status == 429
        assert refused.headers["retry-after"] == "1"
        assert body["code"] == 8
        assert body["details"][0]["reason"] == "TOO_MANY_STREAMS"
        assert "'streamer'" in body["message"]

        assert streams.enter_context(open_stream(keyed_gateway.port, other)).status == 200
        # Unary calls are not streams: the key at its cap still makes them.
        response = harness.request(keyed_gateway.port, "GET", "/v1/things/a", headers={"x-api-key": mine})
        assert response.status == 200


def test_a_unary_call_past_the_in_flight_cap_is_503_json_with_retry_after(keyed_gateway, background):
    key = keyed_gateway.new_key("busy")
    gate = keyed_gateway.gateway.in_flight

    async def fill(busy: int) -> None:
        gate.busy = busy

    background.run(fill(gate.limit))  # every slot taken
    try:
        response = harness.request(keyed_gateway.port, "GET", "/v1/things/a", headers={"x-api-key": key})
    finally:
        background.run(fill(0))

    assert response.status == 503
    assert response.header("retry-after") == "1"
    assert error_of(response)[:2] == (14, "OVERLOADED")
    assert (
        harness.request(keyed_gateway.port, "GET", "/v1/things/a", headers={"x-api-key": key}).status == 200
    )


# -- the gateway's own backlog ----------------------------------------------------------------------------


def test_the_loop_lag_rises_when_the_loop_is_held_and_refuses_past_its_limit():
    async def scenario() -> tuple[float, HttpError]:
        lag = LoopLag(limit=0.02)
        lag.start()
        lag.check()  # an idle loop: admitted
        # The loop is held (what this test is about): the tick due in 5 ms runs at least 145 ms late.
        time.sleep(0.15)  # noqa: ASYNC251
        await asyncio.sleep(0)  # the late tick runs
        await asyncio.sleep(0)
        with pytest.raises(HttpError) as refused:
            lag.check()
        return lag.late, refused.value

    late, error = asyncio.run(scenario())
    assert late >= (0.15 - LAG_TICK) / 2  # one look moves the running lag half way
    assert (error.status, error.code, error.reason) == (503, 14, "OVERLOADED")
    assert error.headers == [(b"retry-after", b"1")]
    assert "behind" in error.message


def test_a_loop_lag_limit_of_zero_never_refuses():
    lag = LoopLag(limit=0)
    lag.late = 10.0
    lag.check()


class _Behind(LoopLag):
    """A loop as far behind as the test says, however fast the test's loop really runs."""

    def start(self) -> None:
        pass


def test_a_gateway_behind_its_lag_limit_refuses_with_503_before_looking_at_the_key(keyed_gateway, background):
    gateway = keyed_gateway.gateway
    behind, real = _Behind(limit=0.05), gateway.lag
    behind.late = 0.2

    async def swap(lag: LoopLag) -> None:
        gateway.lag = lag

    background.run(swap(behind))
    try:
        refused = harness.request(keyed_gateway.port, "GET", "/v1/things/a", headers={"x-api-key": "nope"})
        health = harness.request(keyed_gateway.port, "GET", "/healthz")
    finally:
        background.run(swap(real))

    assert refused.status == 503  # not 401: nothing is done for a request while the loop is behind
    assert refused.header("retry-after") == "1"
    assert error_of(refused)[:2] == (14, "OVERLOADED")
    assert health.status == 200  # a health check still answers: the gateway is alive, only busy
    unknown = harness.request(keyed_gateway.port, "GET", "/v1/things/a", headers={"x-api-key": "nope"})
    assert unknown.status == 401  # caught up: the same request is judged on its key again
