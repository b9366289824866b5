"""The bridge's HTTP/2 gRPC client (`wire.py`) against a real grpc.aio server.

The server's handlers take and return raw bytes, so each test says exactly
what goes over the wire: metadata both ways, rich errors, deadlines and
cancellation seen from the server, messages larger than every flow-control
window, more calls than the server allows streams, header blocks that need
CONTINUATION frames, HPACK's dynamic table under eviction, server streams,
and what happens when the server goes away and comes back.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.gateway import wire
from services.gateway.upstream import RetryBudget, WireCaller
from services.gateway.wire import RpcError
from services.runtime.config import RetryBudgetConfig, RetryConfig

from . import harness

SERVICE = "wiretest.Service"


def path(method: str) -> bytes:
    return f"/{SERVICE}/{method}".encode()


@dataclass
class Backend:
    server: grpc.aio.Server
    port: int
    cancelled: dict[str, asyncio.Event] = field(default_factory=dict)
    seen_metadata: list[tuple[str, Any]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def event(self, name: str) -> asyncio.Event:
        """Set when the server sees a call of `name` cancelled (create it before that happens)."""
        return self.cancelled.setdefault(name, asyncio.Event())


async def start_backend(port: int = 0, **options: Any) -> Backend:
    server = grpc.aio.server(options=list(options.items()))
    backend = Backend(server, 0)

    def cancelled(name: str) -> asyncio.Event:
        return backend.cancelled.setdefault(name, asyncio.Event())

    def count(name: str) -> None:
        backend.calls[name] = backend.calls.get(name, 0) + 1

    async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        count("Echo")
        backend.seen_metadata[:] = list(context.invocation_metadata() or ())
        await context.send_initial_metadata((("initial-key", "i"), ("initial-bin", b"\x00\xff")))
        context.set_trailing_metadata((("trailer-key", "t"), ("trailer-bin", b"\x01\x02\x03")))
        return request

    async def big(request: bytes, context: Any) -> bytes:
        return b"x" * int(request)

    async def fail(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        count("Fail")
        status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message="d\u00e9j\u00e0 vu: 100% \n")
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason="NOPE", domain="wire.test"))
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("unreachable")

    async def unavailable(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        count("Unavailable")
        await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        raise AssertionError("unreachable")

    async def slow(request: bytes, context: Any) -> bytes:
        try:
            await asyncio.sleep(float(request))
        except asyncio.CancelledError:
            cancelled("Slow").set()
            raise
        return b"done"

    async def unique(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.send_initial_metadata((("unique", request.decode() * 20),))
        return request

    async def count_to(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        number, size, fail_after = (int(x) for x in request.split(b","))
        try:
            for n in range(number):
                if fail_after and n == fail_after:
                    await context.abort(grpc.StatusCode.DATA_LOSS, "stopped")
                yield n.to_bytes(4, "big") + b"." * size
        except (asyncio.CancelledError, GeneratorExit):
            cancelled("Count").set()
            raise

    async def refuse(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        await context.abort(grpc.StatusCode.NOT_FOUND, "nothing to stream")
        yield b""

    async def collect(requests: AsyncIterator[bytes], context: Any) -> bytes:
        await asyncio.sleep(0.2)  # the client fills every window first
        sizes = [len(request) async for request in requests]
        return f"{len(sizes)},{sum(sizes)}".encode()

    async def echo_each(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request

    unary = grpc.unary_unary_rpc_method_handler
    handlers = {
        "Collect": grpc.stream_unary_rpc_method_handler(collect),
        "EchoEach": grpc.stream_stream_rpc_method_handler(echo_each),
        "Echo": unary(echo),
        "Big": unary(big),
        "Fail": unary(fail),
        "Unavailable": unary(unavailable),
        "Slow": unary(slow),
        "Unique": unary(unique),
        "Count": grpc.unary_stream_rpc_method_handler(count_to),
        "Refuse": grpc.unary_stream_rpc_method_handler(refuse),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    backend.port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return backend


@pytest.fixture(scope="module")
def backend(background: harness.BackgroundLoop) -> Iterator[Backend]:
    running = background.run(
        start_backend(**{"grpc.max_concurrent_streams": 8, "grpc.max_metadata_size": 65536})
    )
    yield running
    background.run(running.server.stop(0))


@pytest.fixture
def channel(background: harness.BackgroundLoop, backend: Backend) -> Iterator[wire.Channel]:
    opened = wire.Channel(backend.address)
    yield opened
    background.run(opened.close())


def deadline_in(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


def call(channel: wire.Channel, method: str, request: bytes, metadata=(), seconds: float | None = 10.0):
    async def go():
        deadline = None if seconds is None else deadline_in(seconds)
        return await channel.unary(path(method), request, wire.encode_metadata(metadata), deadline)

    return go()


def test_a_unary_call_carries_metadata_both_ways(background, backend, channel):
    sent = (("x-request-id", "r-1"), ("custom-bin", b"\x00\x01\xfe"))
    message, initial, trailing = background.run(call(channel, "Echo", b"hello", sent))

    assert message == b"hello"
    assert ("initial-key", "i") in initial
    assert ("initial-bin", b"\x00\xff") in initial
    assert ("trailer-key", "t") in trailing
    assert ("trailer-bin", b"\x01\x02\x03") in trailing
    assert ("x-request-id", "r-1") in backend.seen_metadata
    assert ("custom-bin", b"\x00\x01\xfe") in backend.seen_metadata
    assert ("user-agent", "rideshare-gateway") not in initial


def test_an_error_keeps_its_code_message_and_rich_details(background, channel):
    with pytest.raises(RpcError) as caught:
        background.run(call(channel, "Fail", b""))

    error = caught.value
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.details == "d\u00e9j\u00e0 vu: 100% \n"
    details = dict(error.trailing_metadata)["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert (status.code, info.reason) == (code_pb2.FAILED_PRECONDITION, "NOPE")


def test_a_deadline_ends_the_call_and_the_server_sees_it(background, backend, channel):
    with pytest.raises(RpcError) as caught:
        background.run(call(channel, "Slow", b"5", seconds=0.2))
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED

    background.run(asyncio.wait_for(backend.event("Slow").wait(), 5))


def test_a_caller_that_goes_away_cancels_the_call(background, backend, channel):
    async def cancel_midway() -> None:
        task = asyncio.ensure_future(call(channel, "Slow", b"5", seconds=None))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await backend.event("Slow").wait()

    background.run(asyncio.wait_for(cancel_midway(), 5))


def test_messages_larger_than_every_window_go_both_ways(background, channel):
    request = bytes(range(256)) * 12_000  # 3 MB
    message, _, _ = background.run(call(channel, "Echo", request))
    assert message == request

    message, _, _ = background.run(call(channel, "Big", b"4000000"))
    assert message == b"x" * 4_000_000

    with pytest.raises(RpcError) as caught:
        background.run(call(channel, "Big", str(wire.MAX_MESSAGE + 1).encode()))
    assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    message, _, _ = background.run(call(channel, "Echo", b"still fine"))
    assert message == b"still fine"


def test_more_calls_than_the_server_allows_streams_wait_their_turn(background, channel):
    async def many() -> list[bytes]:
        results = await asyncio.gather(
            *(channel.unary(path("Echo"), str(n).encode(), [], deadline_in(20)) for n in range(300))
        )
        return [message for message, _, _ in results]

    assert background.run(many()) == [str(n).encode() for n in range(300)]


def test_metadata_larger_than_a_frame_is_sent_in_continuation_frames(background, backend, channel):
    big = "v" * 40_000
    message, _, _ = background.run(call(channel, "Echo", b"m", (("big-value", big),)))
    assert message == b"m"
    assert ("big-value", big) in backend.seen_metadata


def test_the_header_table_stays_in_step_when_entries_are_evicted(background, channel):
    async def many() -> None:
        for n in range(300):
            text = f"{n:05d}"
            message, initial, _ = await channel.unary(path("Unique"), text.encode(), [], deadline_in(10))
            assert message == text.encode()
            assert dict(initial)["unique"] == text * 20

    background.run(many())


def test_a_server_stream_delivers_every_message_then_ends(background, channel):
    async def read() -> list[int]:
        stream = await channel.open_stream(path("Count"), b"3000,10000,0", [], deadline_in(30))
        assert await stream.initial_metadata() == ()
        numbers = []
        async for message in stream:
            numbers.append(int.from_bytes(message[:4], "big"))
            assert len(message) == 10_004
        return numbers

    assert background.run(read()) == list(range(3000))  # 30 MB: past the connection window


def test_a_request_stream_past_every_window_waits_for_window_then_ends(background, channel):
    async def upload() -> tuple[list[bytes], bool]:
        stream = await channel.open_stream(path("Collect"), None, [], deadline_in(30), server_streaming=False)
        chunk = b"r" * 100_000
        sent = [await stream.send(chunk) for _ in range(80)]  # 8 MB; grpc-core's windows are 4 MB
        stream.end_requests()
        return [message async for message in stream], all(sent)

    answers, all_sent = background.run(upload())
    assert all_sent
    assert answers == [b"80,8000000"]


def test_a_bidi_stream_answers_as_requests_arrive(background, channel):
    async def talk() -> list[bytes]:
        stream = await channel.open_stream(path("EchoEach"), None, [], deadline_in(30))
        heard = []
        for word in (b"one", b"two", b"three"):
            assert await stream.send(word)
            messages = aiter(stream)
            heard.append(await anext(messages))  # each answer comes before the next request
        stream.end_requests()
        heard += [message async for message in stream]
        return heard

    assert background.run(talk()) == [b"one", b"two", b"three"]


def test_a_stream_that_fails_midway_raises_after_its_messages(background, channel):
    async def read() -> tuple[int, RpcError]:
        stream = await channel.open_stream(path("Count"), b"10,1,4", [], deadline_in(10))
        await stream.initial_metadata()
        seen: list[bytes] = []

        async def drain() -> None:
            async for message in stream:
                seen.append(message)

        with pytest.raises(RpcError) as caught:
            await drain()
        return len(seen), caught.value

    seen, error = background.run(read())
    assert (seen, error.code, error.details) == (4, grpc.StatusCode.DATA_LOSS, "stopped")


def test_a_stream_refused_at_once_fails_before_any_message(background, channel):
    async def read() -> RpcError:
        stream = await channel.open_stream(path("Refuse"), b"", [], deadline_in(10))
        with pytest.raises(RpcError) as caught:
            await stream.initial_metadata()
        return caught.value

    assert background.run(read()).code is grpc.StatusCode.NOT_FOUND


def test_cancelling_a_stream_tells_the_server(background, backend, channel):
    async def read_then_cancel() -> None:
        stream = await channel.open_stream(path("Count"), b"1000000,1000,0", [], None)
        async for _ in stream:
            break
        stream.cancel()
        await backend.event("Count").wait()

    background.run(asyncio.wait_for(read_then_cancel(), 10))


def test_an_unknown_method_is_unimplemented(background, channel):
    with pytest.raises(RpcError) as caught:
        background.run(call(channel, "Nope", b""))
    assert caught.value.code is grpc.StatusCode.UNIMPLEMENTED


def fails_unavailable_unsent(background: harness.BackgroundLoop, channel: wire.Channel) -> None:
    """A call fails UNAVAILABLE, marked as never started on (safe to send again)."""
    with pytest.raises(RpcError) as caught:
        background.run(call(channel, "Echo", b"x"))
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert caught.value.unprocessed


def test_no_server_is_unavailable_and_a_server_that_comes_back_is_used(background):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    channel = wire.Channel(f"127.0.0.1:{port}")
    try:
        fails_unavailable_unsent(background, channel)

        backend = background.run(start_backend(port))
        try:

            async def eventually() -> bytes:
                while True:
                    try:
                        message, _, _ = await call(channel, "Echo", b"back")
                        return message
                    except RpcError as exc:
                        if exc.code is not grpc.StatusCode.UNAVAILABLE:
                            raise
                        await asyncio.sleep(0.1)

            assert background.run(asyncio.wait_for(eventually(), 10)) == b"back"
            # The server stops: calls in flight finish, later ones fail UNAVAILABLE (or reconnect).
            slow = asyncio.run_coroutine_threadsafe(call(channel, "Slow", b"0.3"), background.loop)
            background.run(asyncio.sleep(0.1))
            background.run(backend.server.stop(2))
            assert slow.result(10)[0] == b"done"
            with pytest.raises(RpcError) as caught:
                background.run(call(channel, "Echo", b"x"))
            assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        finally:
            background.run(backend.server.stop(0))
    finally:
        background.run(channel.close())


def test_a_server_that_does_not_speak_http2_is_unavailable_not_a_hang(background):
    async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")
        writer.close()

    server = background.run(asyncio.start_server(http1, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    channel = wire.Channel(f"127.0.0.1:{port}")
    try:
        fails_unavailable_unsent(background, channel)
    finally:
        background.run(channel.close())
        server.close()


def test_grpc_timeout_uses_at_most_eight_digits():
    assert wire.grpc_timeout(0.25) == b"250000u"
    assert wire.grpc_timeout(5) == b"5000000u"
    assert wire.grpc_timeout(3600) == b"3600000m"
    assert wire.grpc_timeout(10**9) == b"16666667M"
    assert wire.grpc_timeout(0) == b"1u"


def test_unavailable_is_retried_for_safe_methods_only(background, table):
    """GetThing is a GET (safe): tried max_attempts times; Fail is a POST without request_id: once."""
    calls: dict[str, int] = {}

    async def start() -> grpc.aio.Server:
        def unavailable(method: str) -> Any:
            async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
                calls[method] = calls.get(method, 0) + 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "down for a moment")
                raise AssertionError("unreachable")

            return grpc.unary_unary_rpc_method_handler(handle)

        server = grpc.aio.server()
        methods = {name: unavailable(name) for name in ("GetThing", "Fail")}
        handlers = grpc.method_handlers_generic_handler("gatewaytest.v1.Kitchen", methods)
        server.add_generic_rpc_handlers((handlers,))
        server.port = server.add_insecure_port("127.0.0.1:0")  # type: ignore[attr-defined]
        await server.start()
        return server

    server = background.run(start())
    retry = RetryConfig(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    caller = WireCaller(f"127.0.0.1:{server.port}", retry, RetryBudgetConfig())  # type: ignore[attr-defined]
    try:
        for method, url in (("GetThing", "/v1/things/a"), ("Fail", "/v1/fail")):
            rpc = table.match("POST" if method == "Fail" else "GET", url).binding.rpc
            unary = caller.unary(rpc)
            with pytest.raises(RpcError) as caught:
                background.run(unary(rpc.request_class(), 5.0, ()))
            assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        assert calls == {"GetThing": 3, "Fail": 1}
    finally:
        background.run(caller.close())
        background.run(server.stop(0))


def test_the_retry_budget_stops_retries_during_an_outage():
    budget = RetryBudget(RetryBudgetConfig(max_tokens=10, token_ratio=0.5))
    allowed = [budget.failed() for _ in range(8)]
    assert allowed == [True, True, True, True, False, False, False, False]
    for _ in range(9):
        budget.succeeded()
    assert budget.failed()
