"""What the runtime does around every RPC a service handles.

Each generated method handler is wrapped once, when the server is built (not
per call, as a `grpc.aio.ServerInterceptor` would): the wrapper records the
call's deadline and propagated headers for outgoing calls, refuses callers
the mesh file does not allow (authz.py), validates the
request against its contract, turns `MeshError` into a rich status, and turns
anything unexpected into INTERNAL with a correlation id that is logged with
the traceback and never shows the client a stack trace.

One wrapper serves the four RPC kinds: a response stream is sent with
`context.write` from a coroutine (`behavior_of`), so every kind is a coroutine
`(request, context)` and the steps above are written once. A unary call runs
through exactly the code it did before streams shared it: the hot path pays
nothing for the generality.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from . import log
from .context import PROPAGATED_HEADERS, CallContext, current_call
from .errors import FieldViolation, Internal, InvalidArgument, MeshError
from .principal import PREFIX as CLAIM_PREFIX
from .principal import Trust, caller, check_restricted
from .validation import RequestValidator

if TYPE_CHECKING:
    from .telemetry import ServerProbe, Telemetry

_access = log.get_logger("rideshare.access")
_errors = log.get_logger("rideshare.errors")


#: Downstream failures that a handler did not handle and that mean the same to our caller.
_PASS_THROUGH = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class CallWrapper:
    """Builds the wrapped handlers for one service (one ErrorInfo domain)."""

    def __init__(
        self,
        domain: str,
        validators: Mapping[str, RequestValidator],
        checks: Mapping[str, Callable[[grpc.aio.ServicerContext[Any, Any]], None]] | None = None,
        telemetry: Telemetry | None = None,
        trust: Trust | None = None,
        restricted: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.domain = domain
        self.validators = validators
        self.telemetry = telemetry
        """Records metrics and spans of each call (telemetry.py)."""
        self.checks = checks or {}
        """Method path -> what may refuse the call before anything else runs (authz.py)."""
        self.trust = trust or Trust()
        """Whose word on who the call is for is believed (principal.py)."""
        self.restricted = restricted or {}
        """Method path -> the visibility labels a caller needs (the contract's method_visibility)."""
        self.refuse = Refusals()

    def wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """`method` is the full path, `/pkg.Service/Method`; any of the four RPC kinds."""
        found = behavior_of(handler)
        if found is None:
            return handler
        kind, behavior = found
        validate = self.validators.get(method)
        if handler.request_streaming:
            behavior, validate = _checking(behavior, method, validate, self.refuse), None
        probe = (
            self.telemetry.server_probe(method, handler.response_streaming)
            if self.telemetry is not None
            else None
        )
        return replace(
            handler,
            request_deserializer=_tolerant(handler.request_deserializer),
            **{kind: self._wrapped(method, behavior, validate, probe)},
        )

    def _wrapped(
        self,
        method: str,
        behavior: Behavior,
        validate: RequestValidator | None,
        probe: ServerProbe | None,
    ) -> Behavior:
        """The one wrapper: the same steps around every kind of call, in one coroutine."""
        authorize = self.checks.get(method)
        labels = self.restricted.get(method)
        trust = self.trust

        async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            metadata = context.invocation_metadata() or ()  # a fresh tuple per read: read once
            tokens, remaining = _enter(method, context, metadata, trust)
            observed = probe.begin(context, metadata) if probe is not None else None
            code: grpc.StatusCode | None = grpc.StatusCode.OK
            try:
                if remaining is not None and remaining <= 0:
                    # It waited (in grpc, in the event loop) past its deadline: the caller has given
                    # up, so the work is not started; under overload this is what sheds it.
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call started"
                    )
                if authorize is not None:
                    authorize(context)
                if labels is not None:
                    check_restricted(caller(), method[1:], labels)
                if request.__class__ is Malformed:
                    raise self.refuse(method, request)
                if validate is not None:
                    validate(request)
                return await behavior(request, context)
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except Exception as exc:
                outcome = self._outcome(exc)
                # Logged and counted before `abort` sends the status: whoever sees the
                # failure can already read its log line and metrics.
                _leave(tokens, method, outcome.code, started)
                if probe is not None and observed is not None:
                    probe.end(observed, outcome.code, started)
                code = None
                await context.abort(outcome.code, outcome.details, outcome.trailing_metadata)
                return None  # not reached: abort raises
            finally:
                if code is not None:
                    _leave(tokens, method, code, started)
                    if probe is not None and observed is not None:
                        probe.end(observed, code, started)

        return handler

    def _outcome(self, exc: Exception) -> Outcome:
        """The status `exc` stands for, logging what an operator needs to see."""
        if isinstance(exc, MeshError):
            status = exc.to_grpc_status(self.domain)
            return Outcome(status.code, status.details, tuple(status.trailing_metadata))
        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _PASS_THROUGH:
            # A dependency failed in a way our caller can act on (retry later).
            _errors.warning(
                "downstream call failed",
                extra={"fields": {"downstream_code": exc.code().name, "downstream_details": exc.details()}},
            )
            return Outcome(exc.code(), exc.details() or exc.code().name, tuple(exc.trailing_metadata() or ()))
        correlation_id = uuid.uuid4().hex[:16]
        _errors.error("unhandled error", exc_info=exc, extra={"fields": {"correlation_id": correlation_id}})
        error = Internal(
            f"internal error; quote correlation id {correlation_id} when reporting it",
            metadata={"correlation_id": correlation_id},
        )
        status = error.to_grpc_status(self.domain)
        return Outcome(status.code, status.details, tuple(status.trailing_metadata))


@dataclass(frozen=True)
class Outcome:
    """How a failed call ends: the arguments of `context.abort`."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
"""Every RPC kind in one shape: `(request or request iterator, context)` -> the
response, or None once a response stream has been sent with `context.write`
(grpc.aio serves a coroutine handler of a streaming method that way)."""


def behavior_of(handler: grpc.RpcMethodHandler[Any, Any]) -> tuple[str, Behavior] | None:
    """The handler's kind (`unary_stream`, ...) and its behaviour as a `Behavior`.

    A response stream written as an async generator is turned into a coroutine
    that writes each item, so whatever wraps it is one coroutine for all kinds.
    """
    kind = ("stream_" if handler.request_streaming else "unary_") + (
        "stream" if handler.response_streaming else "unary"
    )
    behavior = getattr(handler, kind)
    if behavior is None:
        return None
    if handler.response_streaming and not inspect.iscoroutinefunction(behavior):
        return kind, _written(behavior)
    return kind, behavior


def replace(handler: grpc.RpcMethodHandler[Any, Any], **changes: Any) -> grpc.RpcMethodHandler[Any, Any]:
    """A copy of a generated handler (a namedtuple) with other behaviours."""
    copy: grpc.RpcMethodHandler[Any, Any] = handler._replace(**changes)  # type: ignore[attr-defined]
    return copy


def _written(stream: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]) -> Behavior:
    async def written(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        async for response in stream(request, context):
            await context.write(response)

    return written


def _checking(
    behavior: Behavior, method: str, validate: RequestValidator | None, refuse: Refusals
) -> Behavior:
    """A client stream's requests are each checked as the handler reads them.

    The first before the handler sees anything; a malformed or invalid later one
    ends the call with INVALID_ARGUMENT like a bad first one (the contract holds
    for every message, not only the first).
    """

    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await behavior(_checked(requests, method, validate, refuse), context)

    return checked


async def _checked(
    requests: AsyncIterator[Any], method: str, validate: RequestValidator | None, refuse: Refusals
) -> AsyncIterator[Any]:
    async for request in requests:
        if request.__class__ is Malformed:
            raise refuse(method, request)
        if validate is not None:
            validate(request)
        yield request


class Malformed:
    """What a request's deserializer gives for bytes that are not its type.

    grpc.aio answers a deserializer's exception with UNKNOWN and logs a traceback
    at ERROR, so a client sending garbage looked like a server failure. The
    wrapper answers INVALID_ARGUMENT `MALFORMED_REQUEST` instead, and logs one
    warning per method and `MALFORMED_LOG_INTERVAL` (`Refusals`).
    """

    __slots__ = ("problem", "type_name")

    def __init__(self, type_name: str, problem: str) -> None:
        self.type_name = type_name
        self.problem = problem


class Refusals:
    """Answers malformed requests, logging a burst of them as one line per method and interval."""

    def __init__(self) -> None:
        self._logged: dict[str, tuple[float, int]] = {}  # method -> (when last logged, refused since)

    def __call__(self, method: str, request: Malformed) -> InvalidArgument:
        now = time.monotonic()
        last, since = self._logged.get(method, (-math.inf, 0))
        if now - last >= MALFORMED_LOG_INTERVAL:
            _errors.warning(
                "malformed request",
                extra={
                    "fields": {"type": request.type_name, "problem": request.problem, "since_last": since}
                },
            )
            self._logged[method] = (now, 0)
        else:
            self._logged[method] = (last, since + 1)
        return InvalidArgument(
            FieldViolation("", f"not a valid {request.type_name}: {request.problem}"),
            reason="MALFORMED_REQUEST",
        )


MALFORMED_LOG_INTERVAL = 10.0
"""Seconds between two warnings about malformed requests to one method."""


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserialize` (a message type's FromString), giving `Malformed` where it would raise."""
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, and whatever else a parser of untrusted bytes raises
            return Malformed(type_name, str(exc) or exc.__class__.__name__)

    return parse


def _code_of(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


_Tokens = tuple[contextvars.Token[CallContext | None], contextvars.Token[Mapping[str, Any] | None]]


def _enter(
    method: str,
    context: grpc.aio.ServicerContext[Any, Any],
    metadata: Iterable[tuple[str, Any]] | None = None,
    trust: Trust | None = None,
) -> tuple[_Tokens, float | None]:
    """The call recorded for outgoing calls and logs (`_leave` takes the tokens back), and the
    seconds left until its deadline."""
    remaining = context.time_remaining()
    propagated: list[tuple[str, str]] = []
    claims: dict[str, str] | None = None
    for key, value in context.invocation_metadata() or () if metadata is None else metadata:
        if not isinstance(value, str):
            continue
        if key in PROPAGATED_HEADERS:
            propagated.append((key, value))
        elif key.startswith(CLAIM_PREFIX):
            claims = {} if claims is None else claims
            claims[key] = value
    call = CallContext(
        method=method,
        deadline=None if remaining is None else time.monotonic() + remaining,
        propagated=tuple(propagated),
        principal=(trust or _BELIEVING).principal(context, claims),
    )
    fields: dict[str, str] = {"method": method}
    for key, value in propagated:
        if key == "x-request-id":
            fields["request_id"] = value
    return (current_call.set(call), log.call_fields.set(fields)), remaining


_BELIEVING = Trust()


def _leave(tokens: _Tokens, method: str, code: grpc.StatusCode, started: float) -> None:
    if code is not grpc.StatusCode.OK or _access.isEnabledFor(logging.DEBUG):
        level = logging.DEBUG if code is grpc.StatusCode.OK else logging.INFO
        _access.log(
            level,
            "rpc finished",
            extra={
                "fields": {"code": code.name, "duration_ms": round((time.perf_counter() - started) * 1000, 3)}
            },
        )
    current_call.reset(tokens[0])
    log.call_fields.reset(tokens[1])
