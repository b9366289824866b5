"""The HTTP server's own limits (services/gateway/edge.py): one bad client does not stall the gateway.

Each test speaks raw HTTP over a socket to a gateway with small timeouts and a
small connection cap, and waits for what the server does (an answer, a close)
with the harness' bounded wait: no sleeps, no timing thresholds.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.gateway.server import Options
from services.runtime.config import MeshConfig

from . import harness

TIMEOUT = 0.3
"""The header and body timeouts of the gateway under test, in seconds."""
CONNECTIONS = 100
"""Its cap on open connections."""


@pytest.fixture(scope="module")
def edge_gateway(
    background: harness.BackgroundLoop,
    gateway_mesh: MeshConfig,
    kitchen: harness.Kitchen,
    descriptor_set: Path,
) -> Iterator[harness.RunningGateway]:
    config = harness.mesh_config(
        gateway_mesh,
        header_timeout=TIMEOUT,
        body_timeout=TIMEOUT,
        idle_timeout=TIMEOUT,
        max_connections=CONNECTIONS,
    )
    options = Options(upstreams=[kitchen.address], descriptor_set=str(descriptor_set), auth=False)
    running = background.run(harness.start_gateway(config, options))
    yield running
    background.run(running.stop())


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=harness.WAIT)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def exchange(port: int, data: bytes) -> bytes:
    """Send `data` and read until the server closes the connection."""
    with connect(port) as sock:
        sock.sendall(data)
        return read_all(sock)


def parse(raw: bytes) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON body of one HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert headers.get("content-type") == "application/json", raw[:300]
    document = json.loads(body)
    assert set(document) == {"code", "message", "details"}, document
    return int(status_line.split()[1]), headers, document


def reason_of(document: dict) -> str:
    [info] = [d for d in document["details"] if d["@type"].endswith("ErrorInfo")]
    return str(info["reason"])


# -- the head: its size, its Host, its syntax --------------------------------------------------------------


def test_a_head_past_the_limit_is_refused_with_431_before_it_ends(edge_gateway):
    limit = 64 * 1024  # the default, kept by the test mesh
    head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * limit  # never finished

    status, headers, document = parse(exchange(edge_gateway.port, head))

    assert status == 431
    assert headers["connection"] == "close"
    assert reason_of(document) == "HEADERS_TOO_LARGE"
    assert str(limit) in document["message"]


def test_a_huge_header_is_cut_off_while_other_requests_are_answered(edge_gateway):
    """The issue's 100 MB header, 60 MB here: the parser never gets it, and nobody waits for it."""
    big = connect(edge_gateway.port)
    accepted = 0
    sending = threading.Event()

    def send() -> None:
        nonlocal accepted
        chunk = b"a" * 65536
        with contextlib.suppress(OSError):
            big.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ")
            for _ in range(60 * 16):  # 60 MB
                big.sendall(chunk)
                accepted += len(chunk)
                sending.set()
        sending.set()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        assert sending.wait(harness.WAIT)
        assert harness.request(edge_gateway.port, "GET", "/healthz").status == 200
        status, _, document = parse(read_all(big))
        sender.join(harness.WAIT)
    finally:
        big.close()

    assert (status, reason_of(document)) == (431, "HEADERS_TOO_LARGE")
    # The server closed the connection: only what the kernel's buffers held was accepted.
    assert accepted < 60 * 2**20


def test_a_request_target_past_the_limit_is_414(edge_gateway):
    raw = exchange(edge_gateway.port, b"GET /v1/things/" + b"a" * 9000 + b" HTTP/1.1\r\nhost: x\r\n\r\n")

    status, _, document = parse(raw)
    assert (status, reason_of(document)) == (414, "URL_TOO_LONG")


@pytest.mark.parametrize(
    ("hosts", "count"), [(b"", 0), (b"host: a\r\nhost: b\r\n", 2)], ids=["missing", "doubled"]
)
def test_http_1_1_needs_exactly_one_host(edge_gateway, hosts, count):
    status, _, document = parse(
        exchange(edge_gateway.port, b"GET /v1/things/a HTTP/1.1\r\n" + hosts + b"\r\n")
    )

    assert (status, reason_of(document)) == (400, "INVALID_HOST")
    assert f"it has {count}" in document["message"]


def test_http_1_0_may_leave_the_host_out(edge_gateway):
    raw = exchange(edge_gateway.port, b"GET /v1/things/a HTTP/1.0\r\n\r\n")

    assert raw.startswith(b"HTTP/1.1 200 ")


MALFORMED = {
    "no target": b"GET\r\n\r\n",
    "bad method": b"G(T / HTTP/1.1\r\nhost: x\r\n\r\n",
    "bad version": b"GET / HTTP/9.x\r\nhost: x\r\n\r\n",
    "space in a header name": b"GET / HTTP/1.1\r\nhost: x\r\nbad name: 1\r\n\r\n",
    "control character in a value": b"GET / HTTP/1.1\r\nhost: x\r\nx: a\x01b\r\n\r\n",
    "header without colon": b"GET / HTTP/1.1\r\nhost: x\r\nnocolon\r\n\r\n",
    "bad content-length": b"POST /v1/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1x\r\n\r\n",
    "two content-lengths": (
        b"POST /v1/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"
    ),
    "content-length with chunked": (
        b"POST /v1/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"
    ),
    "bad chunk size": b"POST /v1/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    "chunk without its CRLF": (
        b"POST /v1/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n"
    ),
    "non-ASCII target": b"GET /v1/things/\xe9 HTTP/1.1\r\nhost: x\r\n\r\n",
    "bare LF in the request line": b"GET / HTTP/1.1\nhost: x\r\n\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_the_servers_own_protocol_errors_are_json(edge_gateway, raw):
    status, headers, document = parse(exchange(edge_gateway.port, raw))

    assert status == 400
    assert headers["connection"] == "close"
    assert document["code"] == 3
    assert reason_of(document) == "MALFORMED_HTTP"


def test_an_upgrade_is_answered_as_plain_http(edge_gateway):
    raw = exchange(
        edge_gateway.port,
        b"GET /v1/things/a HTTP/1.1\r\nhost: x\r\nconnection: upgrade, close\r\nupgrade: websocket\r\n"
        b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )

    assert raw.startswith(b"HTTP/1.1 200 ")


# -- timeouts ------------------------------------------------------------------------------------------


def test_half_a_head_is_answered_408_after_the_header_timeout(edge_gateway):
    status, headers, document = parse(
        exchange(edge_gateway.port, b"GET /v1/things/a HTTP/1.1\r\nhost: x\r\n")
    )

    assert (status, reason_of(document)) == (408, "REQUEST_TIMEOUT")
    assert headers["connection"] == "close"


def test_a_connection_that_never_speaks_is_closed_after_the_header_timeout(edge_gateway):
    assert exchange(edge_gateway.port, b"") == b""


def test_a_body_that_stops_coming_is_answered_408_after_the_body_timeout(edge_gateway):
    raw = exchange(
        edge_gateway.port,
        b"POST /v1/echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 100\r\n\r\n{",
    )

    status, _, document = parse(raw)
    assert (status, reason_of(document)) == (408, "REQUEST_TIMEOUT")
    assert "body" in document["message"]


def test_a_long_upload_that_keeps_sending_is_not_cut_off(edge_gateway):
    """A bidi stream, one line at a time after each answer, for several body timeouts in all."""
    with connect(edge_gateway.port) as sock:
        sock.sendall(
            b"POST /v1/running-sum HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        received = b""
        started, lines = time.monotonic(), 0
        while lines < 3 or time.monotonic() - started < 3 * TIMEOUT:
            lines += 1
            line = b'{"value": 1}\n'
            sock.sendall(b"%x\r\n%s\r\n" % (len(line), line))
            while f'"count":{lines}'.encode() not in received:
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
        sock.sendall(b"0\r\n\r\n")
        while not received.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk

    assert received.startswith(b"HTTP/1.1 200 ")
    assert f'"total":"{lines}"'.encode() in received


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(edge_gateway):
    with connect(edge_gateway.port) as sock:
        sock.sendall(b"GET /v1/things/a HTTP/1.1\r\nhost: x\r\n\r\n")
        received = read_all(sock)  # the answer, then the close once it has idled

    assert received.startswith(b"HTTP/1.1 200 ")


# -- open connections ------------------------------------------------------------------------------------


def _room_for(sockets: int) -> int:
    """How many idle sockets this test may open: `sockets`, within the process's file limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < sockets + 1000 and (hard == resource.RLIM_INFINITY or hard > soft):
        soft = sockets + 1000 if hard == resource.RLIM_INFINITY else min(hard, sockets + 1000)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return min(sockets, soft - 1000)


def test_thousands_of_idle_connections_do_not_stop_another_client(edge_gateway):
    count = _room_for(2000)
    assert count > CONNECTIONS
    idle = []
    try:
        for _ in range(count):
            idle.append(connect(edge_gateway.port))
        # Past the cap a connection is refused at once: 503 JSON with Retry-After, then closed.
        status, headers, document = parse(read_all(idle[-1]))
        assert (status, reason_of(document)) == (503, "TOO_MANY_CONNECTIONS")
        assert headers["retry-after"] == "1"

        # Another client is answered: refused the same way while the idle ones hold the cap,
        # served once their header timeout has closed them. Never left hanging.
        raw = exchange(
            edge_gateway.port, b"GET /v1/things/a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        assert raw.startswith(b"HTTP/1.1 200 ") or parse(raw)[0] == 503

        # Every idle connection is closed by the server: by the cap, or by the header timeout.
        for sock in idle:
            sock.settimeout(harness.WAIT)
            read_all(sock)
    finally:
        for sock in idle:
            sock.close()
    assert harness.request(edge_gateway.port, "GET", "/v1/things/a").status == 200
