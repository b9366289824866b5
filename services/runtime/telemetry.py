"""Metrics and spans for every call a process serves and makes, and the admin port serving /metrics.

Each process has one `Telemetry` (`Runtime.telemetry`). The call wrapper
(calls.py) asks it for a `ServerProbe` per method when the server is built;
the client interceptor (client.py) asks for a `ClientProbe` per target
service when a channel is opened. The Prometheus families (metrics.py lists
them) count calls by caller and code, time unary calls and show the calls in
flight, on both sides; `caller` -> `service` is an edge of the call graph.
Label values are bounded: methods come from the contracts, codes are the 17
gRPC codes, and a caller is a mesh service name, `gateway`, `mesh`, or
`unknown`. Streams are counted but not timed (a subscription's length is not
a latency).

Per call the cost is a few dict lookups and integer updates on a `Series`
bound once per method (metrics.py says why not prometheus-client's children).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import grpc
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from . import log
from .config import MeshConfig, ServiceConfig
from .identity import https_context, peer_spiffe_id, spiffe_id
from .metrics import Metrics, Series
from .tracing import Tracing, end_span, restore

_log = log.get_logger("rideshare.telemetry")

#: What a caller is called when nothing names it (grpcurl, a client outside the mesh).
UNKNOWN = "unknown"
#: Callers besides the services: the REST gateway and the mesh tool (its certificate identity).
OTHER_CALLERS = ("gateway", "mesh")
#: Outcomes that are the server's fault (HTTP 5xx in DESIGN.md's mapping); the rest are successes.
FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
USER_AGENT_PREFIX = "rideshare-"
#: Calls to these are plumbing (health checks, reflection), not traffic: not counted, not traced.
PLUMBING_PREFIX = "/grpc."
_OK = grpc.StatusCode.OK
_OUTCOME_OK = ("OK",)

IdentitySource = Callable[[grpc.aio.ServicerContext[Any, Any]], str | None]
_identity_source: IdentitySource | None = None


def set_identity_source(source: IdentitySource | None) -> None:
    """Name callers by `source(context)` instead of their user-agent or certificate.

    With `[tls]` on, callers are already named by their certificate's SPIFFE
    id; this is for another proof of identity. A name `source` returns that is
    not a mesh member is counted as `unknown`; None falls back to the default.
    """
    global _identity_source
    _identity_source = source


def caller_from_user_agent(user_agent: str | None, known: frozenset[str]) -> str:
    """`rideshare-trips grpc-python-asyncio/1.85.3 ...` -> `trips`; anything else -> `unknown`."""
    if user_agent and user_agent.startswith(USER_AGENT_PREFIX):
        name = user_agent[len(USER_AGENT_PREFIX) :].split(" ", 1)[0]
        if name in known:
            return name
    return UNKNOWN


def admin_port(service: ServiceConfig, port: int | None = None) -> int:
    """The admin port of the process serving `service` on `port`; 0 for none.

    A replica on another port keeps the same distance between the two ports,
    so `mesh stats` finds every replica's /metrics from its address. A process
    told to take any free port (`port=0`) has no predictable admin port: none.
    """
    if not service.admin_port or port == 0:
        return 0
    if port is None or not service.port:
        return service.admin_port
    shifted = service.admin_port + (port - service.port)
    return shifted if 0 < shifted <= 65535 else 0


def admin_host(config: MeshConfig, host: str) -> str:
    """Where to reach an admin port of a process at `host`: `[telemetry] admin_host`, or `host`
    when admin ports listen on every address (this machine, if that is every address too)."""
    listen = config.telemetry.admin_host
    reach = host if listen in _EVERYWHERE else listen
    return "127.0.0.1" if reach in _EVERYWHERE else reach


_EVERYWHERE = ("0.0.0.0", "::", "")


def admin_tls(config: MeshConfig) -> bool:
    """Whether admin ports serve HTTPS and admit only clients with a mesh certificate:
    `[telemetry] admin_auth = "mesh-identity"`, which is the default with `[tls]` on."""
    auth = config.telemetry.admin_auth
    return config.tls.enabled if auth is None else auth == "mesh-identity"


def admin_scheme(config: MeshConfig) -> str:
    return "https" if admin_tls(config) else "http"


def serve_admin(telemetry: Telemetry, wanted: int) -> int:
    """Serve /metrics on `[telemetry] admin_host`, port `wanted` (0: nowhere); logs where (or why not).

    The port, or 0. A taken admin port is logged as a warning and the process runs
    on without metrics: telemetry must not take a service down.
    """
    host = telemetry.settings.admin_host
    if not wanted or telemetry.metrics is None:
        return 0
    try:
        bound = telemetry.serve_metrics(host, wanted)
    except OSError as exc:
        _log.warning(
            f"admin port {wanted} is not available ({exc.strerror or exc}); /metrics is not served",
            extra={"fields": {"event": "admin_port_in_use", "admin_port": wanted}},
        )
        return 0
    _log.info(
        f"metrics on {admin_scheme(telemetry.config)}://{host}:{bound}/metrics",
        extra={"fields": {"event": "metrics", "admin_port": bound}},
    )
    return bound


def gateway_admin_port(config: MeshConfig) -> int:
    """The gateway's admin port: its port + `[telemetry] admin_port_offset`; 0 when there is none."""
    gateway, settings = config.gateway, config.telemetry
    if not (gateway.enabled and gateway.port and settings.metrics and settings.admin_port_offset):
        return 0
    port = gateway.port + settings.admin_port_offset
    return port if port <= 65535 else 0


ADMIN_TIMEOUT = 5.0
"""Seconds a connection to the admin port may take to send its request (and to read the answer)."""
ADMIN_CONNECTIONS = 16
"""Connections the admin port serves at once; more are closed as they arrive."""


class _AdminServer(ThreadingWSGIServer):
    """prometheus-client's server, refusing connections past `ADMIN_CONNECTIONS`, over TLS if `tls`.

    The TLS handshake happens in the connection's own thread, within the same
    timeout as the request: done where the server accepts, one client that
    never finishes it would stall every other.
    """

    tls: ssl.SSLContext | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots = threading.BoundedSemaphore(ADMIN_CONNECTIONS)
        if ":" in args[0][0]:
            self.address_family = socket.AF_INET6
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self.tls is not None:
                request.settimeout(_AdminHandler.timeout)
                try:
                    request = self.tls.wrap_socket(request, server_side=True)
                except OSError:  # no certificate, another CA's, not TLS at all, or too slow
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _AdminHandler(WSGIRequestHandler):
    """Quiet (no access log on stderr), and bounded in time by a socket timeout."""

    timeout = ADMIN_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Telemetry:
    """Metrics, tracing and the admin port of one process (a service, or the gateway)."""

    def __init__(self, config: MeshConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.settings = config.telemetry
        self.metrics = Metrics() if self.settings.metrics else None
        self.tracing: Tracing | None = None
        self.known_callers = frozenset((*config.services, *OTHER_CALLERS))
        self._callers: dict[str, str] = {}
        #: With mTLS the caller is `spiffe://<trust domain>/service/<name>` in its certificate (certs.py).
        self._by_spiffe: dict[bytes, str] | None = (
            {spiffe_id(config, name).encode(): name for name in self.known_callers}
            if config.tls.enabled
            else None
        )
        self._admin: Any = None

    @property
    def active(self) -> bool:
        return self.metrics is not None or self.settings.traces != "off"

    def start(self, instance: str) -> None:
        """Begin recording spans (if traces are on); `instance` is this process's address."""
        if self.settings.traces != "off" and self.tracing is None:
            self.tracing = Tracing(self.settings, self.name, instance, self.config.data_dir)

    def serve_metrics(self, host: str, port: int) -> int:
        """Serve /metrics on `host:port` from a thread; the port bound. Raises OSError when it is taken.

        prometheus-client's WSGI app on its threading server, with what that server
        lacks at an edge: each connection must send its request within
        `ADMIN_TIMEOUT`, and past `ADMIN_CONNECTIONS` open ones a new connection is
        closed at once (a thread per connection, so no scraper can hold them all).
        With `admin_tls`, it is HTTPS as this process's mesh identity, and a client
        without a certificate from the mesh CA is refused at the handshake.
        """
        if self.metrics is None:
            return 0
        tls = https_context(self.config, self.name, server=True) if admin_tls(self.config) else None
        server = make_server(host, port, make_wsgi_app(self.metrics.registry), _AdminServer, _AdminHandler)
        server.tls = tls
        threading.Thread(target=server.serve_forever, name="admin", daemon=True).start()
        self._admin = server
        bound: int = server.server_port
        return bound

    def close(self) -> None:
        """Stop serving /metrics and write out the spans still queued."""
        if self._admin is not None:
            self._admin.shutdown()
            self._admin.server_close()
            self._admin = None
        if self.tracing is not None:
            self.tracing.shutdown()
            self.tracing = None

    def caller(self, context: grpc.aio.ServicerContext[Any, Any], user_agent: str | None) -> str:
        """Who calls: the certificate's identity with TLS on (proof), else the user-agent (a claim)."""
        source = _identity_source
        if source is not None:
            named = source(context)
            if named is not None:
                return named if named in self.known_callers else UNKNOWN
        if self._by_spiffe is not None:
            return self._by_spiffe.get(peer_spiffe_id(context), UNKNOWN)
        key = user_agent or ""
        caller = self._callers.get(key)
        if caller is None:
            caller = caller_from_user_agent(user_agent, self.known_callers)
            if len(self._callers) < 256:
                self._callers[key] = caller
        return caller

    def server_probe(self, method: str, streaming: bool = False) -> ServerProbe | None:
        """What the call wrapper records for `method` (`/pkg.Service/Method`); None if nothing."""
        return ServerProbe(self, method, streaming) if self.active else None

    def client_probe(self, target: str) -> ClientProbe | None:
        """What the client interceptor of the channel to `target` records; None if nothing."""
        return ClientProbe(self, target) if self.active else None


def _split(method: str) -> tuple[str, str]:
    grpc_service, _, grpc_method = method.lstrip("/").partition("/")
    return grpc_service, grpc_method


_Begun = tuple[str, Any, Any]
"""(caller, span or None, context token or None)."""


class ServerProbe:
    """Records the calls of one served method: counts by caller and code, latency, in flight, span."""

    def __init__(self, telemetry: Telemetry, method: str, streaming: bool) -> None:
        self.telemetry = telemetry
        self.name = method.lstrip("/")
        grpc_service, grpc_method = _split(method)
        self.attributes = {"rpc.system": "grpc", "rpc.service": grpc_service, "rpc.method": grpc_method}
        metrics = telemetry.metrics
        self.series: Series | None = (
            metrics.server(telemetry.name, grpc_service, grpc_method, timed=not streaming)
            if metrics is not None
            else None
        )

    def begin(
        self, context: grpc.aio.ServicerContext[Any, Any], metadata: Iterable[tuple[str, Any]]
    ) -> _Begun:
        """`metadata` is the call's invocation metadata (the wrapper reads it once for everyone)."""
        user_agent = traceparent = tracestate = None
        for key, value in metadata:
            if not isinstance(value, str):
                continue
            if key == "user-agent":
                user_agent = value
            elif key == "traceparent":
                traceparent = value
            elif key == "tracestate":
                tracestate = value
        caller = self.telemetry.caller(context, user_agent)
        if self.series is not None:
            self.series.in_flight += 1
        tracing = self.telemetry.tracing
        if tracing is None:
            return caller, None, None
        span, token = tracing.server_span(self.name, traceparent, tracestate, self.attributes)
        if span is not None:
            span.set_attribute("mesh.caller", caller)
        return caller, span, token

    def end(self, begun: _Begun, code: grpc.StatusCode, started: float) -> None:
        caller, span, token = begun
        if self.series is not None:
            # An enum's name and hash are Python-level calls: the usual outcome skips them.
            self.series.finish((caller, "OK" if code is _OK else code.name), time.perf_counter() - started)
        if span is not None:
            end_span(span, code.name, code in FAILURE_CODES, token)
        elif token is not None:
            restore(token)


class _ClientMethod:
    """What is bound once per (target, method): its span's name and attributes, its series."""

    def __init__(self, telemetry: Telemetry, target: str, method: str, timed: bool) -> None:
        self.name = method.lstrip("/")
        grpc_service, grpc_method = _split(method)
        self.attributes = {
            "rpc.system": "grpc",
            "rpc.service": grpc_service,
            "rpc.method": grpc_method,
            "peer.service": target,
        }
        metrics = telemetry.metrics
        self.series: Series | None = (
            metrics.client(telemetry.name, target, grpc_service, grpc_method, timed)
            if metrics is not None
            else None
        )


class Outgoing:
    """A call `ClientProbe.begin` started: what it records into, its span, the headers that carry it."""

    __slots__ = ("bound", "headers", "span")

    def __init__(self, bound: _ClientMethod, span: Any, headers: Sequence[tuple[str, str]]) -> None:
        self.bound = bound
        self.span = span
        self.headers = headers


class ClientProbe:
    """Records the calls made on one channel (to one target service), per method."""

    def __init__(self, telemetry: Telemetry, target: str) -> None:
        self.telemetry = telemetry
        self.target = target
        self.methods: dict[Any, _ClientMethod | None] = {}
        self._pending: set[Any] = set()

    def _method(self, method: bytes | str, timed: bool) -> _ClientMethod | None:
        """`timed`: unary (a method is always called the same way, so the first call tells)."""
        try:
            return self.methods[method]
        except KeyError:
            pass
        name = method.decode() if isinstance(method, bytes) else method
        bound = (
            None
            if name.startswith(PLUMBING_PREFIX)
            else _ClientMethod(self.telemetry, self.target, name, timed)
        )
        self.methods[method] = bound
        return bound

    def begin(self, method: bytes | str, timed: bool) -> Outgoing | None:
        """An outgoing call to `method` starts (None: plumbing, not recorded).

        Its `headers` (the trace context: a client span's, or the current one
        when the trace is not recorded) must go in the call's metadata, in place
        of any `traceparent`/`tracestate` there; client.py builds that metadata
        once for these and the headers it propagates. Then `unary` or `stream`.
        """
        bound = self._method(method, timed)
        if bound is None:
            return None
        tracing = self.telemetry.tracing
        if tracing is None:
            return Outgoing(bound, None, ())
        span, headers = tracing.client_span(bound.name, bound.attributes)
        return Outgoing(bound, span, headers)

    def _record(self, bound: _ClientMethod, span: Any, code: grpc.StatusCode, elapsed: float | None) -> None:
        if bound.series is not None:
            bound.series.finish(_OUTCOME_OK if code is _OK else (code.name,), elapsed)
        if span is not None:
            end_span(span, code.name, code in FAILURE_CODES)

    async def unary(
        self,
        continuation: Callable[..., Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
        outgoing: Outgoing,
    ) -> Any:
        """Runs the call `begin` started to its end (so its code and time are known), then hands it back."""
        bound, span = outgoing.bound, outgoing.span
        if bound.series is not None:
            bound.series.in_flight += 1
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            call = await continuation(details, request)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call  # the caller awaits the same call again and gets its error
            code = await call.code()
            return call
        except grpc.aio.AioRpcError as error:
            code = error.code()
            raise
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._record(bound, span, code, time.perf_counter() - started)

    async def stream(
        self,
        continuation: Callable[..., Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
        outgoing: Outgoing,
    ) -> Any:
        """Counts a stream `begin` started when it ends; its span lasts as long as the stream."""
        bound, span = outgoing.bound, outgoing.span
        if bound.series is not None:
            bound.series.in_flight += 1
        try:
            call = await continuation(details, request)
        except BaseException:
            self._record(bound, span, grpc.StatusCode.CANCELLED, None)
            raise

        def done(finished: Any) -> None:
            async def record() -> None:
                try:
                    code = await finished.code()
                except BaseException:
                    code = grpc.StatusCode.CANCELLED
                self._record(bound, span, code, None)

            task = asyncio.ensure_future(record())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        call.add_done_callback(done)
        return call
