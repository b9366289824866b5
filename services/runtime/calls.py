"""What the runtime does around every RPC a service handles.

Each generated method handler is wrapped once, when the server is built (not
per call, as a `grpc.aio.ServerInterceptor` would): the wrapper records the
call's deadline and propagated headers for outgoing calls, refuses callers
the mesh file does not allow (authz.py), validates the
request against its contract, turns `MeshError` into a rich status, and turns
anything unexpected into INTERNAL with a correlation id that is logged with
the traceback and never shows the client a stack trace.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from . import log
from .context import PROPAGATED_HEADERS, CallContext, current_call
from .errors import Internal, MeshError
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
    ) -> None:
        self.domain = domain
        self.validators = validators
        self.telemetry = telemetry
        """Records metrics and spans of each call (telemetry.py)."""
        self.checks = checks or {}
        """Method path -> what may refuse the call before anything else runs (authz.py)."""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """`method` is the full path, `/pkg.Service/Method`."""
        validate = self.validators.get(method)
        streams = handler.response_streaming
        probe = self.telemetry.server_probe(method, streams) if self.telemetry is not None else None
        if handler.unary_unary is not None:
            return replace(handler, unary_unary=self._unary(method, handler.unary_unary, validate, probe))
        if handler.unary_stream is not None:
            return replace(
                handler, unary_stream=self._streaming(method, handler.unary_stream, validate, probe)
            )
        if handler.stream_unary is not None:
            return replace(handler, stream_unary=self._unary(method, handler.stream_unary, None, probe))
        if handler.stream_stream is not None:
            return replace(handler, stream_stream=self._streaming(method, handler.stream_stream, None, probe))
        return handler

    def _unary(
        self,
        method: str,
        behavior: Callable[..., Any],
        validate: RequestValidator | None,
        probe: ServerProbe | None = None,
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message | None]]:
        authorize = self.checks.get(method)

        async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Message | None:
            started = time.perf_counter()
            metadata = context.invocation_metadata() or ()  # a fresh tuple per read: read once
            tokens = _enter(method, context, metadata)
            observed = probe.begin(context, metadata) if probe is not None else None
            code = grpc.StatusCode.OK
            try:
                if authorize is not None:
                    authorize(context)
                if validate is not None:
                    validate(request)
                response: Message = await behavior(request, context)
                return response
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except Exception as exc:
                outcome = self._outcome(exc)
                code = outcome.code
                await context.abort(outcome.code, outcome.details, outcome.trailing_metadata)
                return None  # not reached: abort raises
            finally:
                _leave(tokens, method, code, started)
                if probe is not None and observed is not None:
                    probe.end(observed, code, started)

        return handler

    def _streaming(
        self,
        method: str,
        behavior: Callable[..., Any],
        validate: RequestValidator | None,
        probe: ServerProbe | None = None,
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Message]]:
        authorize = self.checks.get(method)

        async def handler(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Message]:
            started = time.perf_counter()
            metadata = context.invocation_metadata() or ()  # a fresh tuple per read: read once
            tokens = _enter(method, context, metadata)
            observed = probe.begin(context, metadata) if probe is not None else None
            code = grpc.StatusCode.OK
            try:
                if authorize is not None:
                    authorize(context)
                if validate is not None:
                    validate(request)
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except Exception as exc:
                outcome = self._outcome(exc)
                code = outcome.code
                await context.abort(outcome.code, outcome.details, outcome.trailing_metadata)
            finally:
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


def replace(handler: grpc.RpcMethodHandler[Any, Any], **changes: Any) -> grpc.RpcMethodHandler[Any, Any]:
    """A copy of a generated handler (a namedtuple) with other behaviours."""
    copy: grpc.RpcMethodHandler[Any, Any] = handler._replace(**changes)  # type: ignore[attr-defined]
    return copy


def _code_of(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


_Tokens = tuple[contextvars.Token[CallContext | None], contextvars.Token[Mapping[str, Any] | None]]


def _enter(
    method: str,
    context: grpc.aio.ServicerContext[Any, Any],
    metadata: Iterable[tuple[str, Any]] | None = None,
) -> _Tokens:
    remaining = context.time_remaining()
    propagated = tuple(
        (key, value)
        for key, value in (context.invocation_metadata() or () if metadata is None else metadata)
        if key in PROPAGATED_HEADERS and isinstance(value, str)
    )
    call = CallContext(
        method=method,
        deadline=None if remaining is None else time.monotonic() + remaining,
        propagated=propagated,
    )
    fields: dict[str, str] = {"method": method}
    for key, value in propagated:
        if key == "x-request-id":
            fields["request_id"] = value
    return current_call.set(call), log.call_fields.set(fields)


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
