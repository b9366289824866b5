"""The RPC a task is serving: what outgoing calls and log lines read from it.

The call wrapper (calls.py) sets `current_call` for each served call; the
client (client.py) takes the deadline and the propagated headers from it,
tracing (tracing.py) the trace headers, and servicers who the call is for
(principal.py).
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .principal import Principal

#: Request headers that follow a call to every downstream service.
PROPAGATED_HEADERS = ("x-request-id", "traceparent", "tracestate")


@dataclass(frozen=True)
class CallContext:
    """The RPC being served: its method, deadline and headers to pass on."""

    method: str
    deadline: float | None
    """Absolute `time.monotonic()` time the caller stops waiting, if it set one."""
    propagated: tuple[tuple[str, str], ...]
    principal: Principal | None = None
    """Who the call is for; None: the mesh itself."""

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


current_call: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "current_call", default=None
)
