"""How calls travel between services: the gRPC service config every client channel gets.

All of it is grpcio's own client machinery, configured from `[client]` in mesh.toml:

- **round_robin** over every replica of the target service (replicas.py),
- **client-side health checking** (`healthCheckConfig`): a replica whose health
  service reports NOT_SERVING for the contract (for instance while it drains before
  stopping) gets no new calls,
- **outlier detection** (`outlier_detection_experimental` around round_robin): a
  replica failing more than `failure_threshold` percent of its calls in an interval is
  ejected for `base_ejection_time` (longer each time it is ejected again),
- **retries** on UNAVAILABLE, only for methods safe to repeat, with a **retry budget**
  (`retryThrottling`) so retries cannot multiply an outage; calls that never left the
  client are retried transparently by grpcio whatever the method,
- **per-method policies** (`[client.methods."pkg.Service/Method"]`): a timeout of
  their own, or `retry = false`.

Timeouts are not part of the service config: the client interceptor sets them (see
client.py; grpcio applies a service-config timeout 1-2 s early).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping, Sequence
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor as d
from google.protobuf import descriptor_pb2, descriptor_pool

from .config import ClientConfig, MeshConfig, MethodPolicy
from .errors import ConfigError

#: The load-balancing policy's name in grpcio 1.85 (plain `outlier_detection` is not registered).
OUTLIER_DETECTION = "outlier_detection_experimental"


def is_safe_to_retry(method: d.MethodDescriptor) -> bool:
    """Reads, methods marked idempotent, and writes that carry an idempotency key may be repeated."""
    options = method.GetOptions()
    if options.idempotency_level != descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN:
        return True
    if options.Extensions[annotations_pb2.http].get:
        return True
    return "request_id" in method.input_type.fields_by_name


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def _policy(
    client: ClientConfig, service: d.ServiceDescriptor, method: d.MethodDescriptor
) -> MethodPolicy | None:
    """The `[client.methods]` entry for a method: its own, else its service's, else None."""
    return client.methods.get(f"{service.full_name}/{method.name}") or client.methods.get(service.full_name)


def retried(client: ClientConfig, service: d.ServiceDescriptor, method: d.MethodDescriptor) -> bool:
    """Whether calls of `method` are retried on UNAVAILABLE (never an unsafe method)."""
    policy = _policy(client, service, method)
    if policy is not None and policy.retry is False:
        return False
    return client.retry.max_attempts > 1 and is_safe_to_retry(method)


def load_balancing(client: ClientConfig) -> list[dict[str, Any]]:
    round_robin: list[dict[str, Any]] = [{"round_robin": {}}]
    ejection = client.outlier_detection
    if not ejection.enabled:
        return round_robin
    return [
        {
            OUTLIER_DETECTION: {
                "interval": _duration(ejection.interval),
                "baseEjectionTime": _duration(ejection.base_ejection_time),
                "maxEjectionPercent": ejection.max_ejection_percent,
                "failurePercentageEjection": {
                    "threshold": ejection.failure_threshold,
                    "enforcementPercentage": 100,
                    # One replica alone is never ejected: there would be nowhere else to go.
                    "minimumHosts": 2,
                    "requestVolume": ejection.request_volume,
                },
                "childPolicy": round_robin,
            }
        }
    ]


def service_config(config: MeshConfig, services: Sequence[d.ServiceDescriptor]) -> dict[str, Any]:
    """The gRPC service config for a channel carrying `services` (the first one's health is watched)."""
    client = config.client
    retry = client.retry
    safe = [
        {"service": s.full_name, "method": m.name}
        for s in services
        for m in s.methods
        if retried(client, s, m)
    ]
    method_config: list[dict[str, Any]] = []
    if safe:
        method_config.append(
            {
                "name": safe,
                "retryPolicy": {
                    "maxAttempts": retry.max_attempts,
                    "initialBackoff": _duration(retry.initial_backoff),
                    "maxBackoff": _duration(retry.max_backoff),
                    "backoffMultiplier": retry.backoff_multiplier,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        )
    result: dict[str, Any] = {
        "loadBalancingConfig": load_balancing(client),
        "methodConfig": method_config,
        "retryThrottling": {
            "maxTokens": client.retry_budget.max_tokens,
            "tokenRatio": client.retry_budget.token_ratio,
        },
    }
    if client.health_checks and services:
        # MeshServer reports a status per contract it serves (and NOT_SERVING for all while draining).
        result["healthCheckConfig"] = {"serviceName": services[0].full_name}
    return result


def method_timeouts(client: ClientConfig) -> dict[str, float]:
    """`/pkg.Service/Method` (or `/pkg.Service/` for a whole service) -> its configured timeout."""
    found: dict[str, float] = {}
    for selector, policy in client.methods.items():
        if policy.timeout is not None:
            found[f"/{selector}" if "/" in selector else f"/{selector}/"] = policy.timeout
    return found


def timeout_of(method: str | bytes, timeouts: Mapping[str, float]) -> float | None:
    """The configured timeout of a call path, if `[client.methods]` gives it one."""
    path = method.decode() if isinstance(method, bytes) else method
    found = timeouts.get(path)
    if found is None:
        found = timeouts.get(path[: path.rfind("/") + 1])
    return found


def check_methods(config: MeshConfig) -> None:
    """Every `[client.methods]` name must exist in the contracts, and `retry = true` must be safe."""
    for selector, policy in config.client.methods.items():
        key = f'client.methods."{selector}"'
        service_name, _, method_name = selector.partition("/")
        service = find_service(service_name)
        if service is None:
            raise ConfigError(str(config.source), key, f"no contract defines the service {service_name}")
        methods = [m.name for m in service.methods]
        if method_name and method_name not in methods:
            import difflib

            hint = difflib.get_close_matches(method_name, methods, n=1)
            raise ConfigError(
                str(config.source),
                key,
                f"{service_name} has no method {method_name}"
                + (f" (did you mean '{hint[0]}'?)" if hint else f" (it has: {', '.join(methods)})"),
            )
        if policy.retry:
            unsafe = [
                m.name
                for m in service.methods
                if (not method_name or m.name == method_name) and not is_safe_to_retry(m)
            ]
            if unsafe:
                raise ConfigError(
                    str(config.source),
                    f"{key}.retry",
                    f"{', '.join(unsafe)} is not safe to repeat (no GET binding, no idempotency_level, "
                    "no request_id field), so it is never retried",
                )


def find_service(full_name: str) -> d.ServiceDescriptor | None:
    """The descriptor of a service, importing the generated modules of its package if needed."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName(full_name)
    except KeyError:
        pass
    package = full_name.rpartition(".")[0]
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")
    try:
        return pool.FindServiceByName(full_name)
    except KeyError:
        return None
