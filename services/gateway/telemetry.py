"""Telemetry for the REST gateway: its metrics and spans.

The gateway is an HTTP server that calls the mesh through `Clients`, so it
needs two things the gRPC services get from the runtime:

- `gateway_telemetry(config)`: its `Telemetry` (pass it to `Clients`, so every
  call it makes is counted as an edge `gateway -> service` and traced), its
  spans started, and /metrics on its admin port (gateway port + offset);
- `HttpTracing(app, telemetry)`: ASGI middleware making a SERVER span per HTTP
  request that continues the request's `traceparent`, so the gateway's log
  lines and the gRPC calls it makes share one trace id; it logs each request
  like the services log each call (`http request finished`: 4xx/5xx at info,
  the rest at debug, and so are refusals by the limits, which limits.Refusals summarises), inside
  the span, so that line carries the trace id too;"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from services.runtime import log
from services.runtime.config import MeshConfig
from services.runtime.telemetry import Telemetry, gateway_admin_port, serve_admin
from services.runtime.tracing import end_span

_access = log.get_logger("rideshare.gateway.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def gateway_telemetry(config: MeshConfig, instance: str | None = None) -> Telemetry:
    """The gateway's telemetry, recording and serving /metrics; `close()` it when the gateway stops."""
    telemetry = Telemetry(config, "gateway")
    telemetry.start(instance or config.gateway.address)
    serve_admin(telemetry, gateway_admin_port(config))
    return telemetry


class HttpTracing:
    """ASGI middleware: each HTTP request runs inside a SERVER span continuing its `traceparent`."""

    def __init__(self, app: App, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", "GET"), scope.get("path", "")
        tracing = self.telemetry.tracing
        span = token = None
        if tracing is not None:
            headers = dict(scope.get("headers", ()))
            traceparent, tracestate = headers.get(b"traceparent"), headers.get(b"tracestate")
            span, token = tracing.server_span(
                f"HTTP {method}",
                traceparent.decode("latin-1") if traceparent else None,
                tracestate.decode("latin-1") if tracestate else None,
                {"http.request.method": method, "url.path": path},
            )
        status = 500
        refused = False

        async def sending(message: Message) -> None:
            nonlocal status, refused
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if status in (429, 503):
                    refused = any(name == b"retry-after" for name, _ in message.get("headers", ()))
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            # A refusal by the limits (429/503 with Retry-After) is counted and summarised there.
            level = logging.INFO if status >= 400 and not refused else logging.DEBUG
            if _access.isEnabledFor(level):
                elapsed = round((time.perf_counter() - started) * 1000, 3)
                fields = {"http_method": method, "path": path, "status": status, "duration_ms": elapsed}
                _access.log(level, "http request finished", extra={"fields": fields})
            if token is not None:
                end_span(span, status, status >= 500, token, key="http.response.status_code")
