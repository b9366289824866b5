"""Structured logs: one JSON object per line, the same shape in every process.

Each line has `ts`, `level`, `service`, `logger`, `msg`, and whatever the call
context knows (`method`, `request_id`, `trace_id`, `span_id`, `correlation_id`); extra fields passed as
`logger.info("...", extra={"fields": {...}})` are merged in. `mesh up` reads
these lines from every child and prints them with a service prefix.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

#: Fields describing the current RPC, set by the runtime and added to every line.
call_fields: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "call_fields", default=None
)

#: Set by `tracing`: the current trace and span ids (`trace_id`, `span_id`), if a line has any.
trace_fields: Callable[[], Mapping[str, str] | None] | None = None

_service_name = "-"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": _service_name,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields_of_call = call_fields.get()
        if fields_of_call:
            entry.update(fields_of_call)
        ids = trace_fields() if trace_fields is not None else None
        if ids:
            entry.update(ids)
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(service: str, level: str = "info") -> None:
    """Send every logger's records to stderr as JSON lines, tagged with `service`."""
    global _service_name
    _service_name = service
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def get_logger(name: str) -> logging.Logger:
    """A logger under the `rideshare` tree, so one level setting covers the project."""
    return logging.getLogger(name if name.startswith("rideshare") else f"rideshare.{name}")
