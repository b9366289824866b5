"""The mesh file: one description of the topology, with environment overrides.

`mesh.toml` at the repo root (or the file named by `MESH_CONFIG`) lists every
service with its port and settings. Any key can be overridden from the
environment as `MESH_` + the key path joined by `__`, upper-cased:
`MESH_DATA_DIR=/tmp/x`, `MESH_CLIENT__TIMEOUT=2s`,
`MESH_SERVICES__PASSENGERS__PORT=6051`. Everything is validated at start; a
problem stops the program with one line naming the file, the key and the problem.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_FILE = "mesh.toml"
ENV_PREFIX = "MESH_"
#: Variables of the `mesh` tool itself, not config keys.
RESERVED_ENV = frozenset({"MESH_CONFIG", "MESH_SUPERVISED"})
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
_LOG_LEVELS = ("debug", "info", "warning", "error")
#: `[client.methods."<selector>"]`: a fully qualified service, optionally with a method.
_METHOD_SELECTOR = re.compile(
    r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*\.[A-Z][A-Za-z0-9]*(/[A-Z][A-Za-z0-9]*)?$"
)
_FAULT_METHOD = re.compile(r"^(\*|[A-Z][A-Za-z0-9]*)$")
#: `discovery` targets gRPC resolves by itself: DNS (e.g. a Kubernetes headless service) or address lists.
_TARGETS = (
    re.compile(r"^dns:(//[^/\s]*/)?[A-Za-z0-9.-]+:\d{1,5}$"),
    re.compile(r"^ipv4:\d{1,3}(\.\d{1,3}){3}:\d{1,5}(,\d{1,3}(\.\d{1,3}){3}:\d{1,5})*$"),
    re.compile(r"^ipv6:\[[0-9A-Fa-f:.]+\]:\d{1,5}(,\[[0-9A-Fa-f:.]+\]:\d{1,5})*$"),
)
_STATUS_CODES = (
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
#: A service's `admin_port` before it is resolved: not given, so port + `[telemetry] admin_port_offset`.
_DERIVED = -1
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$")
#: Identities that are not services: the REST bridge and the `mesh` tool itself (health checks).
TOOL_IDENTITIES = ("gateway", "mesh")


@dataclass(frozen=True)
class RetryConfig:
    """Retry policy applied to safe methods (reads and writes carrying a request_id)."""

    max_attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 0.5
    backoff_multiplier: float = 2.0


@dataclass(frozen=True)
class RetryBudgetConfig:
    """gRPC `retryThrottling` (per target): retries stop while the tokens are at or below half.

    Each failed attempt costs a token, each success earns `token_ratio`. 100 tokens
    absorb the burst of failures a killed replica causes under load (10, gRPC's
    example value, did not; see docs/architecture.md "Traffic").
    """

    max_tokens: int = 100
    token_ratio: float = 0.1


@dataclass(frozen=True)
class OutlierDetectionConfig:
    """Client-side ejection of a replica that fails too many calls (`outlier_detection_experimental`).

    Every non-OK status counts as a failure (grpc-core does not tell an application
    error from a broken replica), hence the high threshold and the volume floor.
    """

    enabled: bool = True
    interval: float = 0.25
    """Short, so a replica failing every call is ejected before the retry budget runs out (measured)."""
    base_ejection_time: float = 10.0
    max_ejection_percent: int = 50
    failure_threshold: int = 50
    """A replica failing more than this percent of its calls in one interval is ejected."""
    request_volume: int = 5
    """Calls a replica must see in one interval to be judged (5 per 250 ms: from 20 calls/s)."""


@dataclass(frozen=True)
class MethodPolicy:
    """`[client.methods."pkg.Service/Method"]` (or a whole `"pkg.Service"`): overrides for those calls."""

    timeout: float | None = None
    retry: bool | None = None
    """False: never retry; True: insist it is safe (checked against the contract at start)."""


@dataclass(frozen=True)
class ClientConfig:
    """How services call each other."""

    timeout: float = 5.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    retry_budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)
    health_checks: bool = True
    """Route only to replicas whose health service says SERVING (`healthCheckConfig`)."""
    outlier_detection: OutlierDetectionConfig = field(default_factory=OutlierDetectionConfig)
    methods: Mapping[str, MethodPolicy] = field(default_factory=dict)


@dataclass(frozen=True)
class FaultConfig:
    """`[services.<name>.faults.<Method>]`: make a method slow or fail on purpose (see faults.py)."""

    delay: float = 0.0
    abort: str | None = None
    """A canonical status code name, e.g. "UNAVAILABLE"."""
    percent: float = 100.0


@dataclass(frozen=True)
class RateLimitConfig:
    """The token bucket every API key gets unless the key sets its own."""

    requests_per_second: float = 10.0
    burst: int = 20


@dataclass(frozen=True)
class GatewayConfig:
    """The REST bridge (`[gateway]`): where it listens and the limits it enforces."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1024 * 1024
    max_timeout: float = 60.0
    """The longest deadline a client may ask for (`grpc-timeout` header or `timeout` parameter)."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call from a browser; "*" allows any."""
    sse_keepalive: float = 15.0
    """An idle Server-Sent Events stream gets a comment line this often, so proxies that close
    quiet connections (nginx and most load balancers after 60 s) leave it open; 0: never."""
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    enabled: bool = False
    """Whether the mesh file has a `[gateway]` table, so `mesh up` starts the gateway."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsConfig:
    """Mutual TLS between every member of the mesh (`[tls]`, or `tls = true`); see certs.py."""

    enabled: bool = False
    dir: Path | None = None
    """Where `mesh certs` writes and services read the certificates; None: `<data_dir>/certs`."""
    trust_domain: str = "rideshare.local"
    """The SPIFFE trust domain: identities are `spiffe://<trust_domain>/service/<name>`."""


#: `[supervisor] restart`: which exits of a member `mesh up` answers with a new process.
RESTART_POLICIES = ("on-failure", "no")


@dataclass(frozen=True)
class SupervisorConfig:
    """`[supervisor]`: how `mesh up` restarts a member that exits on its own (supervisor.py).

    The delays are systemd's Restart=on-failure with Kubernetes' CrashLoopBackOff:
    the first restart comes quickly, a member that keeps crashing waits twice as
    long each time up to `max_backoff`, and one that stayed up `reset_after` is
    forgiven its earlier crashes.
    """

    restart: str = "on-failure"
    """on-failure: restart a member that exits with a non-zero code or dies of a signal; no: never."""
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    reset_after: float = 60.0


#: `[telemetry] traces`: where spans go (see telemetry.py).
TRACE_SINKS = ("off", "file", "otlp")


@dataclass(frozen=True)
class TelemetryConfig:
    """`[telemetry]`: Prometheus metrics on each process's admin port, and OpenTelemetry traces."""

    metrics: bool = True
    admin_port_offset: int = 1000
    """A service's admin (/metrics) port is its port + this, unless it sets `admin_port`; 0: none."""
    traces: str = "file"
    """off | file (`<data_dir>/traces/<service>.jsonl`) | otlp (to `otlp_endpoint`)."""
    otlp_endpoint: str | None = None
    sample_ratio: float = 0.01
    """Share of new traces recorded (a recorded span costs ~35 us); a call continues its caller's decision."""


@dataclass(frozen=True)
class ServiceConfig:
    """One service of the mesh: where it listens and its own settings."""

    name: str
    host: str
    port: int
    module: str
    package: str
    settings: Mapping[str, Any]
    source: str = "mesh config"
    """The file these values came from, for error messages."""
    authz: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """`[services.<name>.authz]`: method selector -> callers allowed (checked in authz.py)."""
    admin_port: int = 0
    """Where this process serves /metrics (replicas: + their offset from `port`); 0: not served."""
    replicas: int = 1
    """Processes of this service; replica k listens on `port + k * replica_port_step` (replicas.py)."""
    replica_port_step: int = 10
    """The top-level `replica_port_step`: 10 keeps the default ports 50051-50056 apart."""
    discovery: str | None = None
    """A gRPC target clients use instead of the replicas' addresses, e.g. `dns:///trips.svc:50053`."""
    faults: Mapping[str, FaultConfig] = field(default_factory=dict)
    """Method name (or "*") -> a fault to inject into its calls (faults.py)."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def replica_port(self, replica: int) -> int:
        """Where replica `replica` listens (0, a free port, when the service's port is 0)."""
        return self.port + replica * self.replica_port_step if self.port else 0

    def replica_address(self, replica: int) -> str:
        return f"{self.host}:{self.replica_port(replica)}"

    @property
    def domain(self) -> str:
        """The ErrorInfo domain of this service's errors."""
        return f"{self.name}.rideshare"

    def setting(self, key: str, kind: type, default: Any) -> Any:
        """A typed value from `[services.<name>.settings]`, failing fast on the wrong type."""
        value = self.settings.get(key, default)
        where = self.source
        if isinstance(value, _EnvValue):
            where = f"environment {value.variable}"
            value = value.parse(kind)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                where,
                f"services.{self.name}.settings.{key}",
                f"expected {kind.__name__}, got {value!r}",
            )
        return value


@dataclass(frozen=True)
class MeshConfig:
    """The whole mesh file, validated."""

    source: Path
    host: str
    data_dir: Path
    log_level: str
    grace_period: float
    client: ClientConfig
    services: Mapping[str, ServiceConfig]
    drain_period: float = 0.5
    """How long a stopping server stays up NOT_SERVING, while clients watch its health, before it stops."""
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)

    def service(self, name: str) -> ServiceConfig:
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(self.services) or "none"
            raise ConfigError(
                str(self.source), f"services.{name}", f"no such service (known: {known})"
            ) from None


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The mesh file to use: explicit path, then $MESH_CONFIG, then ./mesh.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MESH_CONFIG")
    if env:
        return Path(env)
    return Path.cwd() / DEFAULT_FILE


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> MeshConfig:
    """Read, override from the environment, and validate the mesh file."""
    source = find_config_file(path)
    env = os.environ if env is None else env
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            str(source), "-", "file not found (set MESH_CONFIG or run from the repo root)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(source), "-", f"not valid TOML: {exc}") from None
    _apply_env(raw, env)
    return _Parser(str(source)).mesh(raw, source)


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Write `MESH_A__B=v` into raw["a"]["b"] as a string; the parser converts it."""
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if not all(path):
            continue
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[path[-1]] = _EnvValue(value, name)


class _EnvValue(str):
    """A string from the environment; remembers its variable for error messages."""

    variable: str

    def __new__(cls, value: str, variable: str) -> _EnvValue:
        obj = super().__new__(cls, value)
        obj.variable = variable
        return obj

    def parse(self, kind: type) -> Any:
        """The value as `kind` when it reads as one (settings are typed only when used)."""
        try:
            if kind is bool:
                return {"true": True, "false": False}.get(self.lower(), str(self))
            if kind is int or kind is float:
                return kind(self)
        except ValueError:
            pass
        return str(self)


class _Parser:
    """Turns the raw TOML tree into typed config, naming the key of any problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str, value: Any = None) -> ConfigError:
        if isinstance(value, _EnvValue):
            return ConfigError(f"environment {value.variable}", key, problem)
        return ConfigError(self.source, key, problem)

    def table(self, raw: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail(key, f"expected a table, got {raw!r}", raw)
        for name in raw:
            if name not in allowed:
                hint = _closest(name, allowed)
                where = f"{key}.{name}" if key else name
                raise self.fail(
                    where, "unknown key" + (f" (did you mean '{hint}'?)" if hint else ""), raw[name]
                )
        return raw

    def string(self, raw: Any, key: str) -> str:
        if not isinstance(raw, str) or not raw:
            raise self.fail(key, f"expected a non-empty string, got {raw!r}", raw)
        return str(raw)

    def integer(self, raw: Any, key: str, low: int, high: int) -> int:
        value = raw
        if isinstance(raw, str):
            try:
                value = int(raw)
            except ValueError:
                raise self.fail(key, f"expected an integer, got {raw!r}", raw) from None
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(key, f"expected an integer from {low} to {high}, got {raw!r}", raw)
        return value

    def number(self, raw: Any, key: str, low: float) -> float:
        value = raw
        if isinstance(raw, str):
            try:
                value = float(raw)
            except ValueError:
                raise self.fail(key, f"expected a number, got {raw!r}", raw) from None
        if not isinstance(value, int | float) or isinstance(value, bool) or value < low:
            raise self.fail(key, f"expected a number of at least {low}, got {raw!r}", raw)
        return float(value)

    def duration(self, raw: Any, key: str) -> float:
        """'250ms', '5s', '1m', or a number of seconds; must be positive."""
        if isinstance(raw, int | float) and not isinstance(raw, bool) and raw > 0:
            return float(raw)
        if isinstance(raw, str):
            match = _DURATION.match(raw.strip())
            if match:
                amount = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]
                if amount > 0:
                    return amount
        raise self.fail(key, f"expected a positive duration like '250ms', '5s' or '1m', got {raw!r}", raw)

    def period(self, raw: Any, key: str) -> float:
        """A duration that may also be zero (`"0s"`: off)."""
        if isinstance(raw, str) and _DURATION.match(raw.strip()) and float(raw.strip().rstrip("ms")) == 0:
            return 0.0
        if raw == 0 and not isinstance(raw, bool):
            return 0.0
        return self.duration(raw, key)

    def mesh(self, raw: dict[str, Any], source: Path) -> MeshConfig:
        root = self.table(
            raw,
            "",
            (
                "host",
                "data_dir",
                "log_level",
                "grace_period",
                "drain_period",
                "replica_port_step",
                "client",
                "services",
                "gateway",
                "tls",
                "telemetry",
                "supervisor",
            ),
        )
        host = self.string(root.get("host", "127.0.0.1"), "host")
        data_dir = Path(self.string(root.get("data_dir", "var"), "data_dir"))
        if not data_dir.is_absolute():
            data_dir = source.resolve().parent / data_dir
        log_level = self.string(root.get("log_level", "info"), "log_level").lower()
        if log_level not in _LOG_LEVELS:
            raise self.fail(
                "log_level",
                f"expected one of {', '.join(_LOG_LEVELS)}, got {log_level!r}",
                root.get("log_level"),
            )
        grace = self.duration(root.get("grace_period", "5s"), "grace_period")
        services_raw = root.get("services")
        if not isinstance(services_raw, dict) or not services_raw:
            raise self.fail("services", "expected at least one [services.<name>] table", services_raw)
        services: dict[str, ServiceConfig] = {}
        ports: dict[int, str] = {}
        step = self.integer(root.get("replica_port_step", 10), "replica_port_step", 1, 1000)
        for name, body in services_raw.items():
            svc = replace(self.service(name, body, host), replica_port_step=step)
            # Every replica's port must be free of the others'.
            for replica in range(svc.replicas if svc.port else 0):
                port = svc.replica_port(replica)
                if port > 65535:
                    raise self.fail(
                        f"services.{name}.replicas", f"replica {replica} would listen on port {port}"
                    )
                mine = f" (replica {replica}: port + {replica} * replica_port_step)" if replica else ""
                if port in ports:
                    raise self.fail(
                        f"services.{name}.port",
                        f"port {port}{mine} is already used by services.{ports[port]}",
                        body.get("port"),
                    )
                ports[port] = name + mine
            services[name] = svc
        gateway = self.gateway(root.get("gateway"), host)
        if gateway.enabled and gateway.port in ports and gateway.port != 0:
            raise self.fail(
                "gateway.port",
                f"port {gateway.port} is already used by services.{ports[gateway.port]}",
                root["gateway"].get("port"),
            )
        tls = self.tls(root.get("tls"), source)
        self.check_authz(services, services_raw, tls)
        telemetry = self.telemetry(root.get("telemetry"))
        services = self.admin_ports(services, services_raw, telemetry, gateway)
        return MeshConfig(
            source=source,
            host=host,
            data_dir=data_dir,
            log_level=log_level,
            grace_period=grace,
            drain_period=self.period(root.get("drain_period", "500ms"), "drain_period"),
            client=self.client(root.get("client")),
            services=services,
            gateway=gateway,
            tls=tls,
            telemetry=telemetry,
            supervisor=self.supervisor(root.get("supervisor")),
        )

    def supervisor(self, raw: Any) -> SupervisorConfig:
        body = self.table(raw, "supervisor", ("restart", "initial_backoff", "max_backoff", "reset_after"))
        defaults = SupervisorConfig()
        restart = self.string(body.get("restart", defaults.restart), "supervisor.restart")
        if restart not in RESTART_POLICIES:
            raise self.fail(
                "supervisor.restart",
                f"expected one of {', '.join(RESTART_POLICIES)}, got {restart!r}",
                body["restart"],
            )
        initial = self.duration(
            body.get("initial_backoff", defaults.initial_backoff), "supervisor.initial_backoff"
        )
        longest = self.duration(body.get("max_backoff", defaults.max_backoff), "supervisor.max_backoff")
        if longest < initial:
            key = "max_backoff" if "max_backoff" in body else "initial_backoff"
            raise self.fail(
                f"supervisor.{key}",
                f"initial_backoff ({initial:g}s) is longer than max_backoff ({longest:g}s)",
                body[key],
            )
        return SupervisorConfig(
            restart=restart,
            initial_backoff=initial,
            max_backoff=longest,
            reset_after=self.duration(
                body.get("reset_after", defaults.reset_after), "supervisor.reset_after"
            ),
        )

    def telemetry(self, raw: Any) -> TelemetryConfig:
        body = self.table(
            raw, "telemetry", ("metrics", "admin_port_offset", "traces", "otlp_endpoint", "sample_ratio")
        )
        defaults = TelemetryConfig()
        endpoint = body.get("otlp_endpoint")
        if endpoint is not None:
            endpoint = self.string(endpoint, "telemetry.otlp_endpoint")
            if not re.match(r"^https?://[^/\s]+", endpoint):
                raise self.fail(
                    "telemetry.otlp_endpoint",
                    f"expected a URL like 'http://127.0.0.1:4317', got {endpoint!r}",
                    body["otlp_endpoint"],
                )
        traces = self.string(body.get("traces", "otlp" if endpoint else defaults.traces), "telemetry.traces")
        if traces not in TRACE_SINKS:
            raise self.fail(
                "telemetry.traces",
                f"expected one of {', '.join(TRACE_SINKS)}, got {traces!r}",
                body["traces"],
            )
        if traces == "otlp" and endpoint is None:
            raise self.fail("telemetry.otlp_endpoint", "missing (traces = 'otlp' sends spans there)")
        if traces != "otlp" and endpoint is not None:
            raise self.fail(
                "telemetry.otlp_endpoint",
                f"only used with traces = 'otlp', not {traces!r}",
                body["otlp_endpoint"],
            )
        ratio = self.number(body.get("sample_ratio", defaults.sample_ratio), "telemetry.sample_ratio", 0.0)
        if ratio > 1:
            raise self.fail(
                "telemetry.sample_ratio",
                f"expected a number from 0 to 1, got {ratio!r}",
                body["sample_ratio"],
            )
        return TelemetryConfig(
            metrics=self.boolean(body.get("metrics", defaults.metrics), "telemetry.metrics"),
            admin_port_offset=self.integer(
                body.get("admin_port_offset", defaults.admin_port_offset),
                "telemetry.admin_port_offset",
                0,
                65535,
            ),
            traces=traces,
            otlp_endpoint=endpoint,
            sample_ratio=ratio,
        )

    def admin_ports(
        self,
        services: Mapping[str, ServiceConfig],
        raw: Mapping[str, Any],
        telemetry: TelemetryConfig,
        gateway: GatewayConfig,
    ) -> dict[str, ServiceConfig]:
        """Each service's admin port (its own `admin_port`, else port + offset), refusing clashes.

        Replica k serves /metrics on admin_port + k * replica_port_step, like its gRPC port.
        """
        offset = telemetry.admin_port_offset
        taken = {
            s.replica_port(k): f"services.{n}.port"
            for n, s in services.items()
            if s.port
            for k in range(s.replicas)
        }
        if gateway.enabled and gateway.port:
            taken[gateway.port] = "gateway.port"
            if offset and telemetry.metrics and gateway.port + offset <= 65535:
                taken.setdefault(gateway.port + offset, "the gateway's admin port (gateway.port + offset)")
        resolved: dict[str, ServiceConfig] = {}
        for name, svc in services.items():
            key = f"services.{name}.admin_port"
            given = raw[name].get("admin_port")
            admin = svc.admin_port
            if admin == _DERIVED:
                admin = svc.port + offset if svc.port and offset else 0
            if not telemetry.metrics:
                admin = 0
            last = admin + (svc.replicas - 1) * svc.replica_port_step if admin and svc.port else admin
            if last > 65535:
                raise self.fail(key, f"admin port {last} (of the last replica) is above 65535", given)
            for replica in range(svc.replicas if admin and svc.port else 1 if admin else 0):
                port = admin + replica * svc.replica_port_step
                if taken.get(port, key) != key:
                    raise self.fail(key, f"admin port {port} is already used by {taken[port]}", given)
                taken[port] = key
            resolved[name] = replace(svc, admin_port=admin)
        return resolved

    def tls(self, raw: Any, source: Path) -> TlsConfig:
        """`tls = true` (or MESH_TLS=true) is short for `[tls] enabled = true`."""
        if isinstance(raw, bool | _EnvValue):
            raw = {"enabled": raw}
        body = self.table(raw, "tls", ("enabled", "dir", "trust_domain"))
        directory = None
        if "dir" in body:
            directory = Path(self.string(body["dir"], "tls.dir"))
            if not directory.is_absolute():
                directory = source.resolve().parent / directory
        domain = self.string(body.get("trust_domain", TlsConfig.trust_domain), "tls.trust_domain")
        if not _TRUST_DOMAIN.match(domain):
            raise self.fail(
                "tls.trust_domain",
                f"expected a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_'), got {domain!r}",
                body.get("trust_domain"),
            )
        return TlsConfig(
            enabled=self.boolean(body.get("enabled", False), "tls.enabled"),
            dir=directory,
            trust_domain=domain,
        )

    def boolean(self, raw: Any, key: str) -> bool:
        if isinstance(raw, _EnvValue) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        if not isinstance(raw, bool):
            raise self.fail(key, f"expected true or false, got {raw!r}", raw)
        return raw

    def authz(self, raw: Any, key: str) -> dict[str, tuple[str, ...]]:
        """Method selector -> allowed callers; the selectors are checked against the contract at start."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail(key, f'expected a table like "CreatePayment" = ["trips"], got {raw!r}', raw)
        return {selector: self.strings(callers, f"{key}.{selector}") for selector, callers in raw.items()}

    def check_authz(self, services: Mapping[str, ServiceConfig], raw: dict[str, Any], tls: TlsConfig) -> None:
        """Callers must be members of the mesh, and rules need TLS: without it no caller has an identity."""
        known = (*services, *TOOL_IDENTITIES)
        for name, service in services.items():
            if tls.enabled and name in TOOL_IDENTITIES:
                raise self.fail(
                    f"services.{name}", f"'{name}' is the identity of the {name} tool with tls on; rename it"
                )
            if not service.authz:
                continue
            rules = raw[name]["authz"]
            if not tls.enabled:
                raise self.fail(
                    f"services.{name}.authz",
                    "authorization rules need tls (callers are identified by their certificates); "
                    "set [tls] enabled = true or remove the rules",
                    rules,
                )
            for selector, callers in service.authz.items():
                for caller in callers:
                    if caller != "*" and caller not in known:
                        hint = _closest(caller, known)
                        problem = f"unknown caller {caller!r} (callers: the services, gateway, mesh or '*')"
                        if hint:
                            problem += f"; did you mean '{hint}'?"
                        raise self.fail(f"services.{name}.authz.{selector}", problem, rules[selector])

    def gateway(self, raw: Any, default_host: str) -> GatewayConfig:
        body = self.table(
            raw,
            "gateway",
            ("host", "port", "max_body_bytes", "max_timeout", "cors_origins", "sse_keepalive", "rate_limit"),
        )
        limit = self.table(body.get("rate_limit"), "gateway.rate_limit", ("requests_per_second", "burst"))
        defaults = GatewayConfig()
        return GatewayConfig(
            host=self.string(body.get("host", default_host), "gateway.host"),
            port=self.integer(body.get("port", defaults.port), "gateway.port", 0, 65535),
            max_body_bytes=self.integer(
                body.get("max_body_bytes", defaults.max_body_bytes), "gateway.max_body_bytes", 1, 2**31
            ),
            max_timeout=self.duration(body.get("max_timeout", defaults.max_timeout), "gateway.max_timeout"),
            cors_origins=self.strings(body.get("cors_origins", []), "gateway.cors_origins"),
            sse_keepalive=self.period(
                body.get("sse_keepalive", defaults.sse_keepalive), "gateway.sse_keepalive"
            ),
            rate_limit=RateLimitConfig(
                requests_per_second=self.number(
                    limit.get("requests_per_second", defaults.rate_limit.requests_per_second),
                    "gateway.rate_limit.requests_per_second",
                    0.001,
                ),
                burst=self.integer(
                    limit.get("burst", defaults.rate_limit.burst), "gateway.rate_limit.burst", 1, 1_000_000
                ),
            ),
            enabled=raw is not None,
        )

    def strings(self, raw: Any, key: str) -> tuple[str, ...]:
        """A list of non-empty strings; from the environment, comma-separated."""
        items = [part.strip() for part in raw.split(",") if part.strip()] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
            raise self.fail(key, f"expected a list of non-empty strings, got {raw!r}", raw)
        return tuple(str(item) for item in items)

    def client(self, raw: Any) -> ClientConfig:
        body = self.table(
            raw,
            "client",
            ("timeout", "retry", "retry_budget", "health_checks", "outlier_detection", "methods"),
        )
        retry = self.table(
            body.get("retry"),
            "client.retry",
            ("max_attempts", "initial_backoff", "max_backoff", "backoff_multiplier"),
        )
        defaults = RetryConfig()
        return ClientConfig(
            timeout=self.duration(body.get("timeout", "5s"), "client.timeout"),
            retry=RetryConfig(
                # gRPC caps attempts at 5; 1 turns retries off.
                max_attempts=self.integer(
                    retry.get("max_attempts", defaults.max_attempts), "client.retry.max_attempts", 1, 5
                ),
                initial_backoff=self.duration(
                    retry.get("initial_backoff", defaults.initial_backoff), "client.retry.initial_backoff"
                ),
                max_backoff=self.duration(
                    retry.get("max_backoff", defaults.max_backoff), "client.retry.max_backoff"
                ),
                backoff_multiplier=self.number(
                    retry.get("backoff_multiplier", defaults.backoff_multiplier),
                    "client.retry.backoff_multiplier",
                    1.0,
                ),
            ),
            retry_budget=self.retry_budget(body.get("retry_budget")),
            health_checks=self.boolean(body.get("health_checks", True), "client.health_checks"),
            outlier_detection=self.outlier_detection(body.get("outlier_detection")),
            methods=self.methods(body.get("methods")),
        )

    def retry_budget(self, raw: Any) -> RetryBudgetConfig:
        key = "client.retry_budget"
        body = self.table(raw, key, ("max_tokens", "token_ratio"))
        defaults = RetryBudgetConfig()
        ratio = self.number(body.get("token_ratio", defaults.token_ratio), f"{key}.token_ratio", 0.001)
        if ratio > 1:
            raise self.fail(f"{key}.token_ratio", f"expected a number from 0.001 to 1, got {ratio!r}", ratio)
        return RetryBudgetConfig(
            # gRPC's bounds for retryThrottling.maxTokens: (0, 1000].
            max_tokens=self.integer(
                body.get("max_tokens", defaults.max_tokens), f"{key}.max_tokens", 1, 1000
            ),
            token_ratio=ratio,
        )

    def outlier_detection(self, raw: Any) -> OutlierDetectionConfig:
        key = "client.outlier_detection"
        body = self.table(
            raw,
            key,
            (
                "enabled",
                "interval",
                "base_ejection_time",
                "max_ejection_percent",
                "failure_threshold",
                "request_volume",
            ),
        )
        d = OutlierDetectionConfig()
        return OutlierDetectionConfig(
            enabled=self.boolean(body.get("enabled", d.enabled), f"{key}.enabled"),
            interval=self.duration(body.get("interval", d.interval), f"{key}.interval"),
            base_ejection_time=self.duration(
                body.get("base_ejection_time", d.base_ejection_time), f"{key}.base_ejection_time"
            ),
            max_ejection_percent=self.integer(
                body.get("max_ejection_percent", d.max_ejection_percent),
                f"{key}.max_ejection_percent",
                1,
                100,
            ),
            failure_threshold=self.integer(
                body.get("failure_threshold", d.failure_threshold), f"{key}.failure_threshold", 1, 100
            ),
            request_volume=self.integer(
                body.get("request_volume", d.request_volume), f"{key}.request_volume", 1, 1_000_000
            ),
        )

    def methods(self, raw: Any) -> dict[str, MethodPolicy]:
        """Per-method overrides; the names are checked against the contracts when clients start."""
        if raw is None:
            return {}
        example = '[client.methods."rideshare.billing.v1.BillingService/QuoteFare"]'
        if not isinstance(raw, dict):
            raise self.fail("client.methods", f"expected tables like {example}, got {raw!r}", raw)
        policies: dict[str, MethodPolicy] = {}
        for selector, body in raw.items():
            key = f'client.methods."{selector}"'
            if not _METHOD_SELECTOR.match(selector):
                raise self.fail(
                    key, f"expected 'package.Service/Method' or 'package.Service', as in {example}", body
                )
            table = self.table(body, key, ("timeout", "retry"))
            policies[selector] = MethodPolicy(
                timeout=self.duration(table["timeout"], f"{key}.timeout") if "timeout" in table else None,
                retry=self.boolean(table["retry"], f"{key}.retry") if "retry" in table else None,
            )
        return policies

    def discovery(self, raw: Any, key: str) -> str:
        target = self.string(raw, key)
        if not any(pattern.match(target) for pattern in _TARGETS):
            raise self.fail(
                key,
                "expected a gRPC target like 'dns:///trips.default.svc.cluster.local:50053' "
                f"or 'ipv4:10.0.0.1:50053,10.0.0.2:50053', got {target!r}",
                raw,
            )
        return target

    def faults(self, raw: Any, key: str) -> dict[str, FaultConfig]:
        """`[<key>.<Method>]` tables, or from the environment `Method: abort=CODE, percent=50; ...`."""
        if isinstance(raw, _EnvValue):
            raw = _fault_tables(raw)
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail(
                key,
                f"expected tables like [{key}.QuoteFare] or, from the environment, "
                f"'QuoteFare: abort=UNAVAILABLE, delay=200ms, percent=50; ...', got {raw!r}",
                raw,
            )
        found: dict[str, FaultConfig] = {}
        for method, body in raw.items():
            where = f"{key}.{method}"
            if not _FAULT_METHOD.match(method):
                raise self.fail(
                    where, "expected a method name like 'QuoteFare', or '*' for every method", body
                )
            table = self.table(body, where, ("delay", "abort", "percent"))
            if "delay" not in table and "abort" not in table:
                raise self.fail(where, "a fault needs a delay, an abort, or both", body)
            abort = None
            if "abort" in table:
                abort = self.string(table["abort"], f"{where}.abort").upper()
                if abort not in _STATUS_CODES:
                    hint = _closest(abort, _STATUS_CODES)
                    raise self.fail(
                        f"{where}.abort",
                        f"expected a status code name like 'UNAVAILABLE', got {table['abort']!r}"
                        + (f" (did you mean '{hint}'?)" if hint else ""),
                        table["abort"],
                    )
            percent = self.number(table.get("percent", 100), f"{where}.percent", 0.0)
            if not 0 < percent <= 100:
                raise self.fail(
                    f"{where}.percent", f"expected a percentage above 0, up to 100, got {percent!r}"
                )
            found[method] = FaultConfig(
                delay=self.duration(table["delay"], f"{where}.delay") if "delay" in table else 0.0,
                abort=abort,
                percent=percent,
            )
        return found

    def service(self, name: str, raw: Any, default_host: str) -> ServiceConfig:
        key = f"services.{name}"
        if not _NAME.match(name):
            raise self.fail(key, "service names are lower_snake_case, 1 to 31 characters", raw)
        body = self.table(
            raw,
            key,
            (
                "host",
                "port",
                "module",
                "package",
                "settings",
                "authz",
                "admin_port",
                "replicas",
                "discovery",
                "faults",
            ),
        )
        if "port" not in body:
            raise self.fail(f"{key}.port", "missing (every service needs a port)")
        settings = body.get("settings", {})
        if not isinstance(settings, dict):
            raise self.fail(f"{key}.settings", f"expected a table, got {settings!r}", settings)
        host = self.string(body.get("host", default_host), f"{key}.host")
        port = self.integer(body["port"], f"{key}.port", 0, 65535)
        replicas = self.integer(body.get("replicas", 1), f"{key}.replicas", 1, 64)
        discovery = self.discovery(body["discovery"], f"{key}.discovery") if "discovery" in body else None
        if replicas > 1:
            if port == 0:
                raise self.fail(f"{key}.replicas", "more than one replica needs a fixed port (not 0)")
            if discovery is None and not _is_ip(host):
                raise self.fail(
                    f"{key}.replicas",
                    f"more than one replica needs `host` to be an IP address, not {host!r} (clients list "
                    "the replicas as ipv4:/ipv6: addresses), or a `discovery` target",
                    body.get("replicas"),
                )
        return ServiceConfig(
            name=name,
            host=host,
            port=port,
            replicas=replicas,
            discovery=discovery,
            faults=self.faults(body.get("faults"), f"{key}.faults"),
            module=self.string(body.get("module", f"services.{name}.app"), f"{key}.module"),
            package=self.string(body.get("package", f"rideshare.{name}.v1"), f"{key}.package"),
            settings=settings,
            source=self.source,
            authz=self.authz(body.get("authz"), f"{key}.authz"),
            admin_port=(
                self.integer(body["admin_port"], f"{key}.admin_port", 0, 65535)
                if "admin_port" in body
                else _DERIVED
            ),
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _fault_tables(value: _EnvValue) -> Any:
    """`Method: key=value, ...; Method: ...` as tables, or the string itself when it does not parse."""
    tables: dict[str, dict[str, _EnvValue]] = {}
    for entry in value.split(";"):
        if not entry.strip():
            continue
        method, colon, rest = entry.partition(":")
        body: dict[str, _EnvValue] = {}
        for item in rest.split(","):
            name, equals, setting = item.partition("=")
            if not colon or not equals:
                return value
            body[name.strip()] = _EnvValue(setting.strip().removesuffix("%"), value.variable)
        tables[method.strip()] = body
    return tables


def _closest(name: str, options: tuple[str, ...]) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return found[0] if found else None
