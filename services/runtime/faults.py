"""Fault injection: make a method slow or fail on purpose, to test resilience.

Configured per service in mesh.toml,

    [services.billing.faults.QuoteFare]   # or "*" for every method of the service
    delay = "200ms"                       # wait this long first
    abort = "UNAVAILABLE"                 # then fail with this status code
    percent = 50                          # on this share of calls (default 100)

or from the environment, which reaches one process only (`mesh serve` by hand):
`MESH_SERVICES__BILLING__FAULTS='QuoteFare: abort=UNAVAILABLE, percent=50; CreateInvoice: delay=200ms'`.

The share is exact and spread evenly, not random: with `percent = 50` every second
call fails, with 25 every fourth. Tests of retries and ejection then behave the
same on every run. The fault runs inside the call wrapper (after authorization and
validation, before the servicer), so the access log and metrics see the injected
status like any other, and a server that injects faults says so in its log at start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import descriptor as d

from . import log
from .calls import Behavior, behavior_of, replace
from .config import FaultConfig, ServiceConfig
from .errors import ConfigError

_log = log.get_logger("rideshare.faults")


class Fault:
    """One method's injected fault, counting its calls to strike exactly `percent` of them."""

    def __init__(self, where: str, config: FaultConfig) -> None:
        self.where = where
        """The config key, quoted in the injected error so nobody mistakes it for a real one."""
        self.config = config
        self.code = None if config.abort is None else grpc.StatusCode[config.abort]
        self._basis_points = round(config.percent * 100)
        self.calls = 0
        self.struck = 0

    def strikes(self) -> bool:
        """Whether this call gets the fault: call n does when floor(n * p / 100) grows."""
        before = self.calls * self._basis_points // 10_000
        self.calls += 1
        hit = self.calls * self._basis_points // 10_000 > before
        self.struck += hit
        return hit

    async def __call__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not self.strikes():
            return
        if self.config.delay:
            await asyncio.sleep(self.config.delay)
        if self.code is not None:
            await context.abort(self.code, f"fault injected by {self.where}")


def faults_for(service: ServiceConfig, descriptors: Iterable[d.ServiceDescriptor]) -> dict[str, Fault]:
    """Call path (`/pkg.Service/Method`) -> its fault, for the contracts this process serves."""
    if not service.faults:
        return {}
    methods = {m.name: f"/{s.full_name}/{m.name}" for s in descriptors for m in s.methods}
    found: dict[str, Fault] = {}
    for name, config in service.faults.items():
        key = f"services.{service.name}.faults.{name}"
        if name == "*":
            continue
        if name not in methods:
            import difflib

            hint = difflib.get_close_matches(name, list(methods), n=1)
            raise ConfigError(
                service.source,
                key,
                f"{service.name} serves no method {name}"
                + (f" (did you mean '{hint[0]}'?)" if hint else f" (it serves: {', '.join(methods)})"),
            )
        found[methods[name]] = Fault(key, config)
    every = service.faults.get("*")
    if every is not None:
        for path in methods.values():
            found.setdefault(path, Fault(f"services.{service.name}.faults.*", every))
    for path, fault in found.items():
        _log.warning(
            f"fault injection is on for {path}",
            extra={
                "fields": {
                    "event": "faults_on",
                    "rpc": path,
                    "delay_s": fault.config.delay,
                    "abort": fault.config.abort,
                    "percent": fault.config.percent,
                }
            },
        )
    return found


def inject(handler: grpc.RpcMethodHandler[Any, Any], fault: Fault | None) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler with `fault` run before its behaviour (unchanged without one), for any RPC kind."""
    found = behavior_of(handler)
    if fault is None or found is None:
        return handler
    kind, behavior = found
    return replace(handler, **{kind: _faulty(fault, behavior)})


def inject_all(
    handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]], service: str, faults: Mapping[str, Fault]
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """`inject` for every method of one registered service (method name -> handler)."""
    return {m: inject(h, faults.get(f"/{service}/{m}")) for m, h in handlers.items()}


def _faulty(fault: Fault, behavior: Behavior) -> Behavior:
    async def faulty(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await fault(context)
        return await behavior(request, context)

    return faulty
