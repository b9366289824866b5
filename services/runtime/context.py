"""The RPC a task is serving, and who it is for: what outgoing calls, log lines and checks read.

The call wrapper (calls.py) sets `current_call` for each served call; the
client (client.py) takes the deadline and the propagated headers from it,
tracing (tracing.py) the trace headers, and servicers who the call is for
(principal.py).
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

ADMIN = "admin"
"""The scope of operators' API keys."""


@dataclass(frozen=True)
class Principal:
    """Who a call is for."""

    user: str = ""
    """The signed-in passenger or driver (`passengers/...`), or "" for none."""
    application: str = ""
    """The API key's name the gateway admitted the request with."""
    scopes: frozenset[str] = frozenset()
    client: str = ""
    """The address the request came to the gateway from ("" for none): whose sign-in failures count."""
    mesh: bool = False
    """A call of another service or the `mesh` tool: trusted with everything."""

    @property
    def admin(self) -> bool:
        """The mesh, or an operator (a key with the admin scope): may read and act on anyone's data."""
        return self.mesh or ADMIN in self.scopes

    @property
    def kind(self) -> str:
        if self.mesh:
            return "mesh"
        return "admin" if ADMIN in self.scopes else "user" if self.user else "application"

    @property
    def labels(self) -> frozenset[str]:
        """The visibility labels granted: the scopes, upper-case (`ADMIN` for the admin scope)."""
        return frozenset(scope.upper() for scope in self.scopes)

    def owns(self, *owners: str) -> bool:
        """Whether the caller may act on data that belongs to any of `owners` (resource names)."""
        return self.admin or (bool(self.user) and self.user in owners)


MESH = Principal(mesh=True)
"""Who calls when nobody outside does."""


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
