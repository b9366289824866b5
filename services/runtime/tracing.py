"""OpenTelemetry spans for every call a process serves or makes, and the trace id on every log line.

A served call continues the caller's W3C `traceparent` in a SERVER span; each
outgoing call gets a CLIENT span, child of the current one, whose context is
what travels downstream, so one trace id covers every hop. Spans go through
the SDK's batch processor (a background thread) either to an OTLP collector
(`traces = "otlp"`) or to `<data_dir>/traces/<service>.jsonl`, one compact
JSON object per span (`traces = "file"`, the default).

Each process builds its own `TracerProvider` (not the global one), so tests
can run several services in one process with their own files.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)

from . import log
from .config import TelemetryConfig
from .context import current_call

#: A trace file is moved to `<name>.jsonl.1` (replacing the previous one) when it grows past this.
TRACE_FILE_MAX_BYTES = 64 * 1024 * 1024
#: How often the batch processor writes spans out; short, so a trace is readable right after a call.
EXPORT_DELAY_MS = 1000


def trace_file(data_dir: Path, service: str) -> Path:
    return data_dir / "traces" / f"{service}.jsonl"


class Tracing:
    """The tracer of one process and where its spans go."""

    def __init__(self, settings: TelemetryConfig, service: str, instance: str, data_dir: Path) -> None:
        exporter: SpanExporter
        if settings.traces == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            endpoint = settings.otlp_endpoint or ""
            exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
        else:
            exporter = JsonLinesExporter(trace_file(data_dir, service))
        self.sample_ratio = settings.sample_ratio
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service, "service.instance.id": instance}),
            # Whether to record is decided before the SDK is asked (see `_sampled`): it only
            # ever sees spans to record, so it records every one.
            sampler=ParentBased(ALWAYS_ON),
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=EXPORT_DELAY_MS))
        self.tracer = self.provider.get_tracer("rideshare.mesh")

    def _sampled(self, parent: SpanContext | None) -> bool:
        """A call continues its caller's decision (W3C `sampled` flag); a new trace is recorded at
        `sample_ratio`. The SDK's ParentBased(TraceIdRatioBased) decides the same, but a span it
        then drops still costs a third of a recorded one; deciding first makes those nearly free."""
        if parent is not None and parent.is_valid:
            return bool(parent.trace_flags.sampled)
        return self.sample_ratio >= 1.0 or random.random() < self.sample_ratio

    def server_span(
        self, name: str, traceparent: str | None, tracestate: str | None, attributes: Mapping[str, Any]
    ) -> tuple[Span | None, object]:
        """Starts the span of a served call, continuing the caller's trace, and makes it current.

        The span is None when the trace is not recorded; its context is current all the same
        (the caller's, or a new trace's, made when first asked for), so log lines and
        downstream calls carry it.
        """
        remote = parse_traceparent(traceparent) if traceparent is not None else None
        if remote is not None and not remote[2] & 1:
            # The caller does not record this trace, so neither do we (W3C `sampled` flag): its
            # context is made when first asked for, like an unrecorded new trace's.
            return None, _unminted.set([None, remote, tracestate])
        if remote is None and not self._sampled(None):
            # Most calls start an unrecorded trace: its ids are made when first asked for.
            return None, _unminted.set([None, None, None])
        parent = _parent(remote, tracestate) if remote is not None else None
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        return span, otel_context.attach(trace.set_span_in_context(span))

    def client_span(
        self, name: str, attributes: Mapping[str, Any]
    ) -> tuple[Span | None, list[tuple[str, str]]]:
        """A span for an outgoing call, child of the current one, and the headers that carry it
        (an unrecorded trace passes on the current context, or a new trace id, without a span)."""
        current = trace.get_current_span().get_span_context()
        if not current.is_valid:
            current = _unminted_context() or current
        if not self._sampled(current):
            return None, headers_of(current if current.is_valid else new_trace())
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        return span, headers_of(span.get_span_context())

    def shutdown(self) -> None:
        """Writes out the spans still queued."""
        self.provider.shutdown()


_Remote = tuple[int, int, int]
"""A parsed `traceparent`: trace id, parent span id, flags."""

_unminted: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "rideshare_unminted_trace", default=None
)
"""The served call's unrecorded trace, its context made on first use (`_unminted_context`):
`[SpanContext | None, the caller's parsed traceparent or None, its tracestate or None]`.

Minting ids, or building the caller's context, and making it the current
OpenTelemetry context cost ~12 us a call in place (docs/benchmarks.md,
section 3), though most calls never log a line or call further; so a call
whose trace is not recorded only gets this slot, and the first log line or
outgoing call fills it in: the caller's context when it sent one, else a new trace.
"""


def _unminted_context() -> SpanContext | None:
    slot = _unminted.get()
    if slot is None:
        return None
    context: SpanContext | None = slot[0]
    if context is None:
        remote = slot[1]
        context = slot[0] = new_trace() if remote is None else _remote_context(remote, slot[2])
    return context


def new_trace() -> SpanContext:
    """The context of a new trace that is not recorded: ids for the logs and the next hops."""
    return SpanContext(
        random.getrandbits(128) or 1, random.getrandbits(64) or 1, is_remote=False, trace_flags=TraceFlags(0)
    )


def parse_traceparent(traceparent: str) -> _Remote | None:
    """(trace id, parent span id, flags) from a W3C `traceparent`; None when it is not valid
    (a new trace starts). The propagator's `extract` does the same with a regex, at twice the cost."""
    if len(traceparent) != 55 or traceparent[2] != "-" or traceparent[35] != "-" or traceparent[52] != "-":
        return None
    try:
        version = int(traceparent[:2], 16)
        trace_id = int(traceparent[3:35], 16)
        span_id = int(traceparent[36:52], 16)
        flags = int(traceparent[53:], 16)
    except ValueError:
        return None
    if version == 255 or not trace_id or not span_id:
        return None
    return trace_id, span_id, flags


def _remote_context(remote: _Remote, tracestate: str | None) -> SpanContext:
    trace_id, span_id, flags = remote
    state = TraceState.from_header([tracestate]) if tracestate else None
    return SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1), trace_state=state
    )


def _parent(remote: _Remote, tracestate: str | None) -> Context:
    return trace.set_span_in_context(NonRecordingSpan(_remote_context(remote, tracestate)))


def remote_parent(traceparent: str, tracestate: str | None) -> Context | None:
    """The caller's span from its W3C headers, as an OpenTelemetry context; None when
    `traceparent` is not valid (a new trace starts)."""
    remote = parse_traceparent(traceparent)
    return _parent(remote, tracestate) if remote is not None else None


def headers_of(context: SpanContext) -> list[tuple[str, str]]:
    """The `traceparent` (and `tracestate`) that make `context` the parent of the next hop."""
    headers = [
        ("traceparent", f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}")
    ]
    if context.trace_state:
        headers.append(("tracestate", context.trace_state.to_header()))
    return headers


def end_span(
    span: Span | None,
    code: str | int,
    failed: bool,
    token: object | None = None,
    key: str = "rpc.grpc.status_code",
) -> None:
    """Records the outcome (a gRPC code's name, an HTTP status) on the span (if recorded), ends it,
    and restores the context it replaced."""
    if span is not None:
        span.set_attribute(key, code)
        if failed:
            span.set_status(StatusCode.ERROR, str(code))
        span.end()
    if token is not None:
        restore(token)


def restore(token: object) -> None:
    """Makes current again the trace context `server_span` replaced (its token)."""
    if isinstance(token, contextvars.Token) and token.var is _unminted:
        _unminted.reset(token)
    else:
        otel_context.detach(token)  # type: ignore[arg-type]


def current_ids() -> dict[str, str] | None:
    """The trace and span id a log line written now belongs to.

    From the current span; with tracing off, the trace id of the `traceparent`
    the served call came with (the runtime still forwards it).
    """
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        span_context = _unminted_context() or span_context
    if span_context.is_valid:
        return {"trace_id": f"{span_context.trace_id:032x}", "span_id": f"{span_context.span_id:016x}"}
    call = current_call.get()
    if call is not None:
        for key, value in call.propagated:
            if key == "traceparent" and len(value) >= 55:
                return {"trace_id": value[3:35]}
    return None


log.trace_fields = current_ids


def current_traceparent() -> str:
    """The `traceparent` of where the code runs now ("" outside any trace), to continue it later.

    For work that outlives the call that asked for it (the trip service's
    notification outbox): store this with the work, run the work under
    `continued(...)`, and its calls join the same trace.
    """
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        span_context = _unminted_context() or span_context
    if span_context.is_valid:
        return headers_of(span_context)[0][1]
    call = current_call.get()
    if call is not None:
        for key, value in call.propagated:
            if key == "traceparent":
                return value
    return ""


@contextlib.contextmanager
def continued(traceparent: str) -> Iterator[None]:
    """Runs the block as part of the trace `traceparent` names (nothing changes for "" or a bad one)."""
    parent = remote_parent(traceparent, None) if traceparent else None
    if parent is None:
        yield
        return
    token = otel_context.attach(parent)
    try:
        yield
    finally:
        otel_context.detach(token)


class JsonLinesExporter(SpanExporter):
    """Appends each span as one JSON line; several processes of a service may share the file."""

    def __init__(self, path: Path, max_bytes: int = TRACE_FILE_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        text = "".join(json.dumps(span_record(s), separators=(",", ":"), default=str) + "\n" for s in spans)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            # One write per batch on an O_APPEND file: lines of replicas never interleave.
            with self.path.open("a", encoding="utf-8") as out:
                out.write(text)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing is held open between batches."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The fields of a span an operator reads: ids, name, kind, timing, status, attributes."""
    context = span.context
    start = span.start_time or 0
    end = span.end_time or start
    return {
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name"),
        "start": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start // 10**9)) + f".{start % 10**9:09d}Z",
        "duration_ms": round((end - start) / 1e6, 3),
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }
