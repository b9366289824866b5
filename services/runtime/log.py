"""Structured logs: one JSON object per line, the same shape in every process.

Each line has `ts`, `level`, `service`, `logger`, `msg`, and whatever the call
context knows (`method`, `request_id`, `trace_id`, `span_id`, `correlation_id`); extra fields passed as
`logger.info("...", extra={"fields": {...}})` are merged in. `mesh up` reads
these lines from every child and prints them with a service prefix.

`Outage` is how a loop reports a condition that lasts (its database out of
reach): expected, so a warning without traceback, once and then at most one
per interval, and a line when it ends.
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


class Outage:
    """Failures of one kind that last, as few lines: a warning at the first, at most one per
    `interval` while they go on (how many since the last line), and an info line when they end.

    For what an operator already sees elsewhere (the database out of reach is NOT_SERVING on
    the health service, and `mesh status` says so): a line with a traceback every second per
    loop told them nothing more and buried everything else.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.interval = interval
        self.clock = clock
        self.failures = 0
        """Failures since the outage began (0: no outage)."""
        self._unsaid = 0
        self._said = 0.0

    def failed(self, error: object) -> None:
        """One more failure; a warning line if it is the first or the last line is `interval` old."""
        self.failures += 1
        self._unsaid += 1
        now = self.clock()
        if self.failures > 1 and now - self._said < self.interval:
            return
        state = "unavailable" if self.failures == 1 else "still unavailable"
        self.logger.warning(
            f"{self.what} {state}: {error}",
            extra={"fields": {"event": "outage", "failures": self._unsaid, "error": str(error)}},
        )
        self._said, self._unsaid = now, 0

    def ended(self) -> None:
        """It works again: an info line if there was an outage, saying how many failures it had."""
        if not self.failures:
            return
        self.logger.info(
            f"{self.what} available again after {self.failures} failures",
            extra={"fields": {"event": "outage_over", "failures": self.failures}},
        )
        self.failures = self._unsaid = 0
