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

from services.gateway import api, routes
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


def test_with_the_cap_full_of_new_work_a_continuing_call_still_gets_a_slot():
    gate = InFlight(limit=4, max_wait=0)  # a quarter, 1 slot, is kept for continuing work
    assert gate.reserve == 1
    for _ in range(3):
        assert gate.try_enter(NEW)
    assert not gate.try_enter(NEW)  # new work has its share
    with pytest.raises(HttpError) as refused:
        gate.check(None, NEW)  # refused before its body is read
    assert (refused.value.status, refused.value.reason) == (503, "OVERLOADED")
    assert "keeps 1 more for calls on existing resources" in refused.value.message
    gate.check(None, CONTINUING)
    assert gate.try_enter(CONTINUING)  # the ride already admitted goes on
    assert not gate.try_enter(CONTINUING)  # now every slot is taken
    assert gate.busy == 4


def test_continuing_work_may_take_every_slot_and_new_work_then_waits_for_its_share():
    gate = InFlight(limit=4, max_wait=0)
    for _ in range(4):
        assert gate.try_enter(CONTINUING)
    gate.leave(None)
    assert not gate.try_enter(NEW)  # 3 in flight: the reserve is not free
    gate.leave(None)
    assert gate.try_enter(NEW)


def test_a_freed_slot_goes_to_a_waiting_continuing_call_before_new_ones_that_came_first():
    async def scenario() -> list[str]:
        gate = InFlight(limit=4, max_wait=30)
        for kind in (NEW, NEW, NEW, CONTINUING):
            assert gate.try_enter(kind)
        order: list[str] = []

        async def call(name: str, continues: bool) -> None:
            await gate.wait(None, continues)
            order.append(name)

        new = asyncio.ensure_future(call("new", NEW))
        await asyncio.sleep(0)  # it waits first
        continuing = asyncio.ensure_future(call("continuing", CONTINUING))
        await asyncio.sleep(0)
        assert (gate.waiting_new, gate.waiting_continuing) == (1, 1)
        gate.leave(None)  # 4 -> 3 in flight: the continuing call takes it
        await continuing
        assert order == ["continuing"]
        gate.leave(None)  # 3 in flight would take the reserve: the new call keeps waiting
        await asyncio.sleep(0)
        assert (gate.busy, gate.waiting_new) == (3, 1)
        gate.leave(None)  # 2 in flight: its turn
        await new
        assert gate.busy == 3
        return order

    assert asyncio.run(scenario()) == ["continuing", "new"]


def test_the_wait_ahead_of_a_continuing_call_counts_only_continuing_calls():
    async def scenario() -> None:
        gate = InFlight(limit=4, max_wait=1.0)
        for _ in range(4):
            assert gate.try_enter(CONTINUING)
        gate.holding = 1.0  # a call holds its slot 1 s: a turn every 0.25 s, 0.33 s for new work
        waiters = [asyncio.ensure_future(gate.wait(None, NEW)) for _ in range(3)]
        await asyncio.sleep(0)
        assert gate.waiting_new == 3  # each could start within 1 s: 1, 2, 3 turns of 0.33 s
        with pytest.raises(HttpError):
            gate.check(None, NEW)  # 3 new calls ahead of it and itself: 1.33 s
        gate.check(None, CONTINUING)  # it goes before them: 0.25 s
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert gate.waiting == 0

    asyncio.run(scenario())


def test_a_route_continues_work_when_its_path_names_an_existing_resource():
    everything = api.from_generated()
    built = routes.build(everything, routes.labels_of(everything))  # as an operator sees it
    kinds = {(b.rpc.descriptor.name, b.http_method, b.template.source): b.continues for b in built.bindings}
    assert kinds[("RequestTrip", "POST", "/v1/trips")] is NEW
    assert kinds[("ListTrips", "GET", "/v1/trips")] is NEW
    assert kinds[("GetTrip", "GET", "/v1/{name=trips/*}")] is CONTINUING
    assert kinds[("AcceptTrip", "POST", "/v1/{name=trips/*}:accept")] is CONTINUING
    assert kinds[("CancelTrip", "POST", "/v1/{name=trips/*}:cancel")] is CONTINUING
    assert kinds[("SignIn", "POST", "/v1/passengers:signIn")] is NEW
    assert kinds[("ListDrivers", "GET", "/v1/drivers")] is NEW
    assert kinds[("UpdatePassenger", "PATCH", "/v1/{passenger.name=passengers/*}")] is CONTINUING
    # A parent in the path is not the resource acted on: listing its notifications starts work.
    assert kinds[("ListNotifications", "GET", "/v1/{parent=passengers/*}/notifications")] is NEW


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


def test_past_new_work_s_share_of_the_cap_a_new_call_is_503_and_a_call_on_a_resource_goes_on(
    keyed_gateway, background
):
    key = {"x-api-key": keyed_gateway.new_key("rides")}
    gate = keyed_gateway.gateway.in_flight

    async def fill(busy: int) -> None:
        gate.busy = busy

    background.run(fill(gate.limit - gate.reserve))  # new work has its share
    try:
        new = harness.request(keyed_gateway.port, "POST", "/v1/echo", {"id": "e1"}, headers=key)
        existing = harness.request(keyed_gateway.port, "GET", "/v1/things/a", headers=key)
    finally:
        background.run(fill(0))

    assert new.status == 503
    assert new.header("retry-after") == "1"
    assert error_of(new)[:2] == (14, "OVERLOADED")
    assert existing.status == 200


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
