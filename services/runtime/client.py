"""Channels to other services by name, configured from the mesh file.

`clients.stub(PassengerServiceStub)` finds the contract behind the stub class,
the mesh service that serves it (package `rideshare.<name>.v1`, or a
service's `package` key), and returns a stub on a shared channel that applies
the mesh defaults: a timeout on every call, and a
retry policy on UNAVAILABLE for methods that are safe to repeat — reads
(`google.api.http` GET, or `idempotency_level` set) and writes whose request carries a `request_id`
(the client fills in a fresh one when a caller leaves it empty, so a retry
never applies a write twice). A retry budget
(`retryThrottling`) keeps retries from multiplying an outage. The channel
names every replica of the service and balances, health-checks and ejects
between them; traffic.py builds that service config from `[client]`.

Outgoing calls made while serving a call inherit its remaining deadline and
its `x-request-id`/`traceparent` headers (see `calls.current_call`).

The timeout is set on each call by an interceptor, not as a service-config
`timeout`: grpcio applies the latter 1-2 s early (a 1 s timeout fails every
call at once; grpc/grpc#34547, #40633), and the server never sees it.
"""

from __future__ import annotations

import importlib
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
from google.protobuf import descriptor as d

from . import identity, replicas
from .config import MeshConfig, ServiceConfig
from .context import current_call
from .errors import ConfigError
from .traffic import check_methods, is_safe_to_retry, method_timeouts, service_config, timeout_of

__all__ = ["Clients", "is_safe_to_retry", "service_config", "service_descriptor_of"]

if TYPE_CHECKING:
    from .telemetry import ClientProbe, Outgoing, Telemetry

#: Headers a client span's own replace (tracing.headers_of).
_TRACE_HEADERS = ("traceparent", "tracestate")


class _Stub(Protocol):
    """What a generated `XServiceStub` is made from (its .pyi types the rest)."""

    def __init__(self, channel: grpc.aio.Channel) -> None: ...


StubT = TypeVar("StubT", bound=_Stub)


def service_descriptor_of(stub_class: type) -> d.ServiceDescriptor:
    """`PassengerServiceStub` -> the `rideshare.passengers.v1.PassengerService` descriptor."""
    module_name = stub_class.__module__
    if not module_name.endswith("_pb2_grpc") or not stub_class.__name__.endswith("Stub"):
        raise TypeError(f"{stub_class!r} is not a generated gRPC stub class")
    messages = importlib.import_module(module_name.removesuffix("_grpc"))
    descriptor: d.ServiceDescriptor = messages.DESCRIPTOR.services_by_name[
        stub_class.__name__.removesuffix("Stub")
    ]
    return descriptor


class _Propagate(grpc.aio.UnaryUnaryClientInterceptor):
    """Sets the mesh timeout (unless the call set its own), shortened to the served call's
    remaining deadline, and passes the served call's trace headers downstream.

    One object handles every kind of call, but a channel must get it once per kind
    (`interceptors()`): grpc.aio files an interceptor under the first kind it is an
    instance of, so one object of all four kinds would only ever see unary calls.
    """

    def __init__(
        self, timeout: float, probe: ClientProbe | None = None, timeouts: Mapping[str, float] | None = None
    ) -> None:
        self.timeout = timeout
        self.probe = probe
        """Records metrics and a client span of each call (telemetry.py)."""
        self.timeouts = timeouts or {}
        """`[client.methods]` timeouts by call path (traffic.method_timeouts)."""

    def _default(self, method: str | bytes, default: float | None) -> float | None:
        if not self.timeouts:
            return default
        configured = timeout_of(method, self.timeouts)
        return default if configured is None else configured

    def _details(
        self,
        details: grpc.aio.ClientCallDetails,
        default: float | None,
        outgoing: Outgoing | None = None,
    ) -> grpc.aio.ClientCallDetails:
        """The call's details with its timeout, the served call's headers and the trace's, built once."""
        timeout = default if details.timeout is None else details.timeout
        call = current_call.get()
        propagated: Sequence[tuple[str, str]] = ()
        if call is not None:
            remaining = call.time_remaining()
            if remaining is not None:
                timeout = max(0.0, remaining if timeout is None else min(remaining, timeout))
            propagated = call.propagated
        trace = outgoing.headers if outgoing is not None else ()
        metadata = details.metadata
        if propagated or trace:
            # The trace headers replace what the call or the served one carried: they name the
            # client span (or the current trace), the parent the next hop must see.
            replaced = _TRACE_HEADERS if trace else ()
            items = [(key, value) for key, value in metadata or () if key not in replaced]
            present = {key for key, _ in items}
            items += [(k, v) for k, v in propagated if k not in present and k not in replaced]
            metadata = grpc.aio.Metadata(*items, *trace)
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        if getattr(request, "request_id", None) == "":
            # A write the caller sent without an idempotency key gets one here, so the
            # channel's retries on UNAVAILABLE can never apply it twice (AIP-155).
            keyed = type(request)()
            keyed.CopyFrom(request)
            keyed.request_id = str(uuid.uuid4())
            request = keyed
        method = client_call_details.method
        probe = self.probe
        outgoing = probe.begin(method, timed=True) if probe is not None else None
        details = self._details(client_call_details, self._default(method, self.timeout), outgoing)
        if probe is not None and outgoing is not None:
            return await probe.unary(continuation, details, request, outgoing)
        return await continuation(details, request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        # A stream (StreamNotifications) lives as long as its reader wants: no default
        # timeout, only the served call's deadline or the caller's own (or [client.methods]).
        method = client_call_details.method
        probe = self.probe
        outgoing = probe.begin(method, timed=False) if probe is not None else None
        details = self._details(client_call_details, self._default(method, None), outgoing)
        if probe is not None and outgoing is not None:
            return await probe.stream(continuation, details, request, outgoing)
        return await continuation(details, request)

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        # A stream of requests (the gateway bridging a client-streaming RPC) lasts as long as
        # its sender wants, like a server stream; it is counted when it ends.
        return await self.intercept_unary_stream(continuation, client_call_details, request_iterator)

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self.intercept_unary_stream(continuation, client_call_details, request_iterator)

    def interceptors(self) -> list[Any]:
        """What a channel is given: this object for unary calls, a view of it for each stream kind."""
        return [self, _UnaryStream(self), _StreamUnary(self), _StreamStream(self)]


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, propagate: _Propagate) -> None:
        self.propagate = propagate

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self.propagate.intercept_unary_stream(continuation, client_call_details, request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, propagate: _Propagate) -> None:
        self.propagate = propagate

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, requests: Any) -> Any:
        return await self.propagate.intercept_stream_unary(continuation, client_call_details, requests)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, propagate: _Propagate) -> None:
        self.propagate = propagate

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, requests: Any
    ) -> Any:
        return await self.propagate.intercept_stream_stream(continuation, client_call_details, requests)


class Clients:
    """One channel per mesh service, opened on first use and closed together."""

    def __init__(self, config: MeshConfig, caller: str, telemetry: Telemetry | None = None) -> None:
        self.config = config
        self.caller = caller
        self.telemetry = telemetry
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[type, Any] = {}
        check_methods(config)
        self._timeouts = method_timeouts(config.client)

    def target_service(self, descriptor: d.ServiceDescriptor) -> ServiceConfig:
        """The mesh service whose package serves this contract."""
        package = descriptor.file.package
        for service in self.config.services.values():
            if service.package == package:
                return service
        raise ConfigError(
            str(self.config.source),
            "services",
            f"no service in the mesh serves package {package} ({descriptor.full_name})",
        )

    def channel(self, target: ServiceConfig, descriptors: Sequence[d.ServiceDescriptor]) -> grpc.aio.Channel:
        """The shared channel to a mesh service: mTLS as this caller when the mesh has TLS on
        (certs.py), to every replica (or the service's discovery target)."""
        channel = self._channels.get(target.name)
        if channel is None:
            channel = self._open(
                target.name,
                replicas.target(target),
                service_config(self.config, descriptors),
                identity.channel_credentials(self.config, self.caller),
                identity.channel_options(self.config, target.name),
            )
        return channel

    def channel_to(
        self,
        address: str,
        descriptors: Sequence[d.ServiceDescriptor],
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> grpc.aio.Channel:
        """A channel to a server outside the mesh (the gateway's `--upstream`), with the mesh's
        retries, budget, timeouts and telemetry. Its health is the server's overall status
        (`""`), the one every standard health service reports."""
        channel = self._channels.get(address)
        if channel is None:
            config = service_config(self.config, descriptors)
            if "healthCheckConfig" in config:
                config["healthCheckConfig"] = {"serviceName": ""}
            channel = self._open(address, address, config, credentials, options)
        return channel

    def _open(
        self,
        name: str,
        target: str,
        config: dict[str, Any],
        credentials: grpc.ChannelCredentials | None,
        tls_options: Sequence[tuple[str, Any]],
    ) -> grpc.aio.Channel:
        options: list[tuple[str, Any]] = [
            ("grpc.service_config", json.dumps(config)),
            ("grpc.enable_retries", 1),
            ("grpc.primary_user_agent", f"rideshare-{self.caller}"),
            # grpc's default reconnect backoff grows to 120 s, so a service that was
            # down a minute stays unreachable long after it is back; cap it.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        interceptors = _Propagate(
            self.config.client.timeout,
            self.telemetry.client_probe(name) if self.telemetry is not None else None,
            timeouts=self._timeouts,
        ).interceptors()
        channel = (
            grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
            if credentials is None
            else grpc.aio.secure_channel(
                target, credentials, options=[*options, *tls_options], interceptors=interceptors
            )
        )
        self._channels[name] = channel
        return channel

    def stub(self, stub_class: type[StubT]) -> StubT:
        """A stub for the service behind `stub_class`, on the shared channel.

        Made once per class and kept with its channel: building one looks up the contract
        and makes a callable for every method, about 5 % of the trip service's CPU when it
        was done per call (docs/benchmarks.md §5)."""
        stub: StubT | None = self._stubs.get(stub_class)
        if stub is None:
            descriptor = service_descriptor_of(stub_class)
            target = self.target_service(descriptor)
            siblings = list(descriptor.file.services_by_name.values())
            stub = self._stubs[stub_class] = stub_class(self.channel(target, siblings))
        return stub

    async def close(self) -> None:
        self._stubs = {}
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
