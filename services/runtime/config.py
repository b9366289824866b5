"""The mesh file, `mesh.toml` (or $MESH_CONFIG), whose comments say what each key is for; any key can be
overridden as `MESH_` + the key path joined by `__` (`MESH_CLIENT__TIMEOUT=2s`). A problem stops the
program with one line naming the file or variable, the key and the problem. Each table is a frozen pydantic
dataclass whose fields carry the key's type, range and default; what spans several keys is `_checked`
after (docs/architecture.md, "Configuration")."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import field, replace
from pathlib import Path
from typing import Annotated, Any, get_args

import grpc
from pydantic import BeforeValidator, Field, PlainValidator, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import ErrorDetails

from .errors import ConfigError

RESERVED_ENV = frozenset({"MESH_CONFIG", "MESH_SUPERVISED", "MESH_REQUIRE_POSTGRES"})  # not config keys
TOOL_IDENTITIES = ("gateway", "mesh")  # not services: the REST bridge, and the `mesh` tool's health checks
_STATUS_CODES = tuple(code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_BOOLS = {"true": True, "false": False}
_FROM_TEXT: dict[type, Callable[[str], Any]] = {int: int, float: float, bool: lambda s: _BOOLS[s.lower()]}
_FILLED_IN = ("source", "name", "enabled")  # the loader sets them: in the file, they are unknown keys


class _EnvValue(str):
    """A string from the environment; remembers its variable for error messages."""

    variable: str

    def __new__(cls, value: str, variable: str) -> _EnvValue:
        obj = super().__new__(cls, value)
        obj.variable = variable
        return obj


def _kind(check: Callable[[Any], Any], expected: str) -> PlainValidator:
    """A kind of value: `check` returns the value converted, or None if it is not one."""

    def validate(raw: Any) -> Any:
        if (value := check(raw)) is None:
            raise ValueError(f"expected {expected}, got {raw!r}")
        return value

    return PlainValidator(validate)


def _matching(pattern: str, expected: str) -> PlainValidator:
    return _kind(lambda raw: str(raw) if isinstance(raw, str) and re.match(pattern, raw) else None, expected)


def _one_of(options: tuple[str, ...], expected: str = "", fold: Callable[[str], str] = str) -> PlainValidator:
    def check(raw: Any) -> str:
        if (value := fold(_TEXT.func(raw))) in options:  # type: ignore[call-arg]
            return value
        hint = f" (did you mean '{h}'?)" if (h := _closest(value, options)) else ""
        raise ValueError(f"expected {expected or 'one of ' + ', '.join(options)}, got {raw!r}{hint}")

    return PlainValidator(check)


def _duration(zero: bool = False, longest: float = float("inf")) -> PlainValidator:
    """'250ms', '5s', '1m', '12h', '30d' or seconds; positive (or 0, off, where `zero`), at most `longest`."""

    def check(raw: Any) -> float:
        match = _DURATION.match(raw.strip()) if isinstance(raw, str) else None
        number = isinstance(raw, int | float) and not isinstance(raw, bool)
        seconds = float(raw) if number else float(match[1]) * _SECONDS[match[2]] if match else -1.0
        if seconds > longest:
            raise ValueError(f"expected a duration of at most {longest:g}s, got {raw!r}")
        if seconds > 0 or (zero and seconds == 0):
            return seconds
        raise ValueError(f"expected a positive duration like '250ms', '5s' or '1m', got {raw!r}")

    return PlainValidator(check)


def _read(text: str, kind: type) -> Any:
    """A string (from the environment, or quoted in the file) as `kind` if it reads as one; else itself."""
    try:
        return _FROM_TEXT[kind](text) if kind in _FROM_TEXT else text
    except (KeyError, ValueError):
        return text


def _from_text(kind: type) -> BeforeValidator:
    return BeforeValidator(lambda raw: _read(raw, kind) if isinstance(raw, str) else raw)


def _faults(raw: Any) -> Any:
    """`Method: key=value, ...; Method: ...` from the environment, as tables."""
    if not isinstance(raw, _EnvValue):
        return raw
    tables: dict[str, dict[str, _EnvValue]] = {}
    for entry in filter(str.strip, raw.split(";")):
        method, _, rest = entry.partition(":")
        pairs = [item.partition("=") for item in rest.split(",")]
        if not all(equals for _, equals, _ in pairs):
            example = "'QuoteFare: abort=UNAVAILABLE, delay=200ms, percent=50; ...'"
            raise ValueError(f"expected tables, or from the environment {example}, got {raw!r}")
        values = {k.strip(): _EnvValue(v.strip().removesuffix("%"), raw.variable) for k, _, v in pairs}
        tables[method.strip()] = values
    return tables


def _strings(raw: Any) -> tuple[str, ...] | None:
    """A list of non-empty strings; from the environment, comma-separated."""
    items = [part.strip() for part in raw.split(",") if part.strip()] if isinstance(raw, str) else raw
    valid = isinstance(items, list | tuple) and all(isinstance(item, str) and item for item in items)
    return tuple(items) if valid else None


_TEXT_IS = "a non-empty string"
_TEXT = _kind(lambda raw: str(raw) if isinstance(raw, str) and raw else None, _TEXT_IS)
_PATH = _kind(lambda raw: Path(raw) if isinstance(raw, str | Path) and str(raw) else None, _TEXT_IS)
_SELECTOR = r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*\.[A-Z][A-Za-z0-9]*(/[A-Z][A-Za-z0-9]*)?$"
_TARGET = (  # what gRPC resolves itself: DNS (e.g. a Kubernetes headless service) or address lists
    r"^(dns:(//[^/\s]*/)?[A-Za-z0-9.-]+:\d{1,5}|ipv4:\d{1,3}(\.\d{1,3}){3}:\d{1,5}(,\d{1,3}(\.\d{1,3}){3}:\d{1,5})*"
    r"|ipv6:\[[0-9A-Fa-f:.]+\]:\d{1,5}(,\[[0-9A-Fa-f:.]+\]:\d{1,5})*)$"
)
_TARGET_IS = "a gRPC target like 'dns:///trips.default.svc.cluster.local:50053' or 'ipv4:10.0.0.1:50053,...'"
Int = Annotated[int, Field(strict=True), _from_text(int)]
Number = Annotated[float, Field(strict=True), _from_text(float)]
Flag = Annotated[bool, Field(strict=True), _from_text(bool)]
Count = Annotated[Int, Field(ge=1, le=1_000_000)]
Port = Annotated[Int, Field(ge=0, le=65535)]
Step = Annotated[Int, Field(ge=1, le=1000)]
Seconds = Annotated[float, _duration()]
Delay = Annotated[float, _duration(zero=True)]  # 0: off, or at once
Text = Annotated[str, _TEXT]
Names = Annotated[tuple[str, ...], _kind(_strings, "a list of non-empty strings")]
ServiceName = Annotated[str, _matching(r"^[a-z][a-z0-9_]{0,30}$", "lower_snake_case, 1 to 31 characters")]
Selector = Annotated[str, _matching(_SELECTOR, "'package.Service/Method' or 'package.Service'")]
FaultMethod = Annotated[str, _matching(r"^(\*|[A-Z][A-Za-z0-9]*)$", "a method name, or '*' for all")]
_TLS_SHORTHAND = BeforeValidator(lambda raw: {"enabled": raw} if isinstance(raw, bool | _EnvValue) else raw)
Faults = Annotated[Mapping[FaultMethod, "FaultConfig"], BeforeValidator(_faults)]
TrustDomain = Annotated[str, _matching(r"^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$", "a SPIFFE trust domain")]


@dataclass(frozen=True, config={"extra": "forbid"})
class RetryConfig:
    max_attempts: Annotated[Int, Field(ge=1, le=5)] = 4
    initial_backoff: Seconds = 0.05
    max_backoff: Seconds = 0.5
    backoff_multiplier: Annotated[Number, Field(ge=1.0)] = 2.0


@dataclass(frozen=True, config={"extra": "forbid"})
class RetryBudgetConfig:
    max_tokens: Annotated[Int, Field(ge=1, le=1000)] = 100
    token_ratio: Annotated[Number, Field(ge=0.001, le=1)] = 0.1


@dataclass(frozen=True, config={"extra": "forbid"})
class OutlierDetectionConfig:
    enabled: Flag = True
    interval: Seconds = 0.25
    base_ejection_time: Seconds = 10.0
    max_ejection_percent: Annotated[Int, Field(ge=1, le=100)] = 50
    failure_threshold: Annotated[Int, Field(ge=1, le=100)] = 50
    request_volume: Count = 5


@dataclass(frozen=True, config={"extra": "forbid"})
class MethodPolicy:
    timeout: Seconds | None = None
    retry: Flag | None = None  # true insists a method is safe to retry; the contract must agree


@dataclass(frozen=True, config={"extra": "forbid"})
class ClientConfig:
    timeout: Seconds = 5.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    retry_budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)
    health_checks: Flag = True
    outlier_detection: OutlierDetectionConfig = field(default_factory=OutlierDetectionConfig)
    methods: Mapping[Selector, MethodPolicy] = field(default_factory=dict)


@dataclass(frozen=True, config={"extra": "forbid"})
class FaultConfig:
    delay: Delay = 0.0
    abort: Annotated[str, _one_of(_STATUS_CODES, "a status code name", str.upper)] | None = None
    percent: Annotated[Number, Field(gt=0, le=100)] = 100.0


@dataclass(frozen=True, config={"extra": "forbid"})
class RateLimitConfig:
    requests_per_second: Annotated[Number, Field(ge=0.001)] = 10.0
    burst: Count = 20


@dataclass(frozen=True, config={"extra": "forbid"})
class GatewayConfig:
    host: Text = "127.0.0.1"
    port: Port = 8080
    max_body_bytes: Annotated[Int, Field(ge=1, le=2**31)] = 1024 * 1024
    max_timeout: Seconds = 60.0
    cors_origins: Names = ()
    sse_keepalive: Delay = 15.0  # proxies close quiet connections (nginx, most load balancers: after 60 s)
    max_header_bytes: Annotated[Int, Field(ge=1024, le=2**24)] = 64 * 1024
    max_url_bytes: Annotated[Int, Field(ge=256, le=2**24)] = 8 * 1024
    header_timeout: Seconds = 10.0
    body_timeout: Seconds = 30.0
    idle_timeout: Seconds = 5.0
    max_connections: Count = 1000
    max_in_flight: Count = 24
    max_queue_wait: Delay = 0.05
    max_lag: Delay = 0.05  # how late the gateway's event loop may run before it refuses new calls
    max_streams_per_key: Count = 100
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    enabled: bool = False  # the file has a [gateway] table, so `mesh up` starts it (set by the loader)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, config={"extra": "forbid"})
class TlsConfig:
    enabled: Flag = False
    dir: Annotated[Path, _PATH] | None = None
    trust_domain: TrustDomain = "rideshare.local"


@dataclass(frozen=True, config={"extra": "forbid"})
class SessionsConfig:
    access_token_lifetime: Annotated[float, _duration(longest=86400.0)] = 900.0
    refresh_token_lifetime: Annotated[float, _duration(longest=365 * 86400.0)] = 30 * 86400.0
    keys_dir: Annotated[Path, _PATH] | None = None


@dataclass(frozen=True, config={"extra": "forbid"})
class SupervisorConfig:
    restart: Annotated[str, _one_of(("on-failure", "no"))] = "on-failure"
    initial_backoff: Seconds = 0.5
    max_backoff: Seconds = 30.0
    reset_after: Seconds = 60.0


@dataclass(frozen=True, config={"extra": "forbid"})
class TelemetryConfig:
    metrics: Flag = True
    admin_host: Text = "127.0.0.1"
    admin_port_offset: Port = 1000
    admin_auth: Annotated[str, _one_of(("none", "mesh-identity"))] | None = None
    """Unset: "mesh-identity" (HTTPS, a mesh client certificate required) with [tls] on, else "none"."""
    traces: Annotated[str, _one_of(("off", "file", "otlp"))] = "file"
    otlp_endpoint: Annotated[str, _matching(r"^https?://[^/\s]+", "a URL")] | None = None
    sample_ratio: Annotated[Number, Field(ge=0, le=1)] = 0.01


@dataclass(frozen=True, config={"extra": "forbid"})
class StorageConfig:  # SQLite files by default; PostgreSQL, a database per service with `{service}`
    backend: Annotated[str, _one_of(("sqlite", "postgres"))] = "sqlite"
    dsn: Annotated[str, _matching(r"^postgres(ql)?://", "a postgresql:// URL")] = (
        "postgresql://postgres@127.0.0.1:5432/{service}"
    )
    pool_min: Annotated[Int, Field(ge=0, le=1000)] = 1
    pool_max: Annotated[Int, Field(ge=1, le=1000)] = 10
    statement_timeout: Seconds = 5.0
    connect_timeout: Seconds = 5.0  # also how long a call waits for a pooled connection
    health_interval: Seconds = 1.0  # how often a service asks it is there (readiness.py)

    @model_validator(mode="after")
    def _pool(self) -> StorageConfig:
        if self.pool_min > self.pool_max:
            raise ValueError(f"pool_min ({self.pool_min}) is more than pool_max ({self.pool_max})")
        return self

    def dsn_for(self, service: str) -> str:
        return self.dsn.replace("{service}", service)


@dataclass(frozen=True, config={"extra": "forbid"})
class ServiceConfig:
    name: str
    host: Text
    port: Annotated[Port, Field(description="every service needs a port")]
    module: Text
    package: Text
    settings: Mapping[str, Any]
    source: str = "mesh config"  # the file these values came from, for error messages
    authz: Mapping[str, Names] = field(default_factory=dict)  # method selector -> callers (authz.py)
    admin_port: Port = 0  # where /metrics is served (replicas: + their offset from `port`); 0: not served
    replicas: Annotated[Int, Field(ge=1, le=64)] = 1
    replica_port_step: Step = 10  # the top-level key's value, unless the table sets its own
    discovery: Annotated[str, _matching(_TARGET, _TARGET_IS)] | None = None
    faults: Faults = field(default_factory=dict)
    storage: StorageConfig = field(default_factory=StorageConfig)  # [storage], then its own table's keys

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
        where = f"environment {value.variable}" if isinstance(value, _EnvValue) else self.source
        value = _read(value, kind) if isinstance(value, _EnvValue) else value
        try:
            return TypeAdapter(kind).validate_python(value, strict=True)
        except ValidationError:
            problem = f"expected {kind.__name__}, got {value!r}"
            raise ConfigError(where, f"services.{self.name}.settings.{key}", problem) from None


@dataclass(frozen=True, config={"extra": "forbid"})
class MeshConfig:
    source: Path  # the file read (set by the loader)
    host: Text = "127.0.0.1"
    data_dir: Annotated[Path, _PATH] = Path("var")
    log_level: Annotated[str, _one_of(("debug", "info", "warning", "error"), fold=str.lower)] = "info"
    grace_period: Seconds = 5.0
    drain_period: Delay = 0.5  # NOT_SERVING while clients watch health and move away, before stopping
    replica_port_step: Step = ServiceConfig.replica_port_step
    client: ClientConfig = field(default_factory=ClientConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    tls: Annotated[TlsConfig, _TLS_SHORTHAND] = field(default_factory=TlsConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Every service's, unless its own table says otherwise (checked first, so errors name it here)."""
    services: Mapping[ServiceName, ServiceConfig] = field(default_factory=dict)

    def service(self, name: str) -> ServiceConfig:
        if name not in self.services:
            known = ", ".join(self.services) or "none"
            raise ConfigError(str(self.source), f"services.{name}", f"no such service (known: {known})")
        return self.services[name]


_MESH = TypeAdapter(MeshConfig)


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> MeshConfig:
    """Read the mesh file (`path`, else $MESH_CONFIG, else ./mesh.toml), lay the environment (`env`, else
    os.environ) over it, fill in what the file leaves to the loader, validate, and check across keys."""
    source = Path(path or os.environ.get("MESH_CONFIG") or Path.cwd() / "mesh.toml")
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problem = "file not found (set MESH_CONFIG or run from the repo root)"
        raise ConfigError(str(source), "-", problem) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(source), "-", f"not valid TOML: {exc}") from None
    origins: dict[tuple[str, ...], str] = {}  # key path -> the variable that set it
    for name, value in (os.environ if env is None else env).items():  # MESH_A__B=v: raw["a"]["b"] = "v"
        *parents, key = name.removeprefix("MESH_").lower().split("__")
        if name.startswith("MESH_") and name not in RESERVED_ENV and all((*parents, key)):
            node = raw
            for part in parents:
                if not isinstance(node := node.setdefault(part, {}), dict):
                    break
            else:
                node[key], origins[(*parents, key)] = _EnvValue(value, name), name
    services: dict[str, Any] = raw["services"] if isinstance(raw.get("services"), dict) else {}
    gateway = raw.get("gateway")
    tables = [(name, table) for name, table in services.items() if isinstance(table, dict)]
    for at, table in [([], raw), (["gateway"], gateway), *((["services", n], t) for n, t in tables)]:
        if isinstance(table, dict) and (given := [[*at, key] for key in _FILLED_IN if key in table]):
            raise ConfigError(_origin(origins, given[0], str(source)), _key(given[0]), "unknown key")
    host, step = raw.get("host", MeshConfig.host), raw.get("replica_port_step", MeshConfig.replica_port_step)
    storage = raw.get("storage", {})
    for name, table in tables:
        defaults = {"module": f"services.{name}.app", "package": f"rideshare.{name}.v1", "settings": {}}
        if isinstance(storage, dict) and isinstance(own := table.get("storage", {}), dict):
            defaults["storage"] = {**storage, **own}  # the service's keys over the shared ones
            table = {k: v for k, v in table.items() if k != "storage"}
        filled = {"host": host, "replica_port_step": step, **defaults, **table}
        services[name] = {**filled, "name": name, "source": str(source)}
    if isinstance(telemetry := raw.get("telemetry"), dict) and "otlp_endpoint" in telemetry:
        telemetry.setdefault("traces", "otlp")  # an endpoint implies sending spans there
    if isinstance(gateway, dict) or gateway is None:
        raw["gateway"] = {"host": host, **(gateway or {}), "enabled": gateway is not None}
    tree = {**raw, "source": source}
    try:
        config = _MESH.validate_python(tree)
    except ValidationError as exc:
        raise _config_error(exc.errors()[0], origins, str(source)) from None
    return _checked(config, tree, origins)


def _checked(config: MeshConfig, tree: dict[str, Any], origins: dict[tuple[str, ...], str]) -> MeshConfig:
    """What spans keys (replicas, callers, faults, ports once each...); admin ports, paths from the file."""

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(_origin(origins, key.split("."), str(config.source)), key, problem)

    if not config.services:
        raise fail("services", "expected at least one [services.<name>] table")
    known, tls = (*config.services, *TOOL_IDENTITIES), config.tls
    for name, svc in config.services.items():
        at = f"services.{name}"
        if svc.replicas > 1 and svc.port == 0:
            raise fail(f"{at}.replicas", "more than one replica needs a fixed port (not 0)")
        if svc.replicas > 1 and svc.discovery is None and not _is_ip(svc.host):
            problem = f"more than one replica needs `host` to be an IP address, not {svc.host!r} (clients "
            raise fail(f"{at}.replicas", problem + "list ipv4:/ipv6: addresses), or a `discovery`")
        if tls.enabled and name in TOOL_IDENTITIES:
            raise fail(at, f"'{name}' is the identity of the {name} tool with tls on; rename it")
        if svc.authz and not tls.enabled:
            problem = "authorization rules need tls (callers are identified by their certificates)"
            raise fail(f"{at}.authz", problem + "; set [tls] enabled = true or remove the rules")
        for method in (method for method, f in svc.faults.items() if not f.delay and f.abort is None):
            raise fail(f"{at}.faults.{method}", "a fault needs a delay, an abort, or both")
        for selector, caller in ((s, c) for s, cs in svc.authz.items() for c in cs if c not in (*known, "*")):
            hint = f"; did you mean '{h}'?" if (h := _closest(caller, known)) else ""
            problem = f"unknown caller {caller!r} (callers: the services, gateway, mesh or '*'){hint}"
            raise fail(f"{at}.authz.{selector}", problem)
    traces, endpoint = config.telemetry.traces, config.telemetry.otlp_endpoint
    if traces == "otlp" and endpoint is None:
        raise fail("telemetry.otlp_endpoint", "missing (traces = 'otlp' sends spans there)")
    if traces != "otlp" and endpoint is not None:
        raise fail("telemetry.otlp_endpoint", f"only used with traces = 'otlp', not {traces!r}")
    if config.telemetry.admin_auth == "mesh-identity" and not tls.enabled:
        problem = "'mesh-identity' needs tls (the mesh's certificates); set [tls] enabled = true"
        raise fail("telemetry.admin_auth", problem)
    first, longest = config.supervisor.initial_backoff, config.supervisor.max_backoff
    if longest < first:
        key = "max_backoff" if "max_backoff" in tree.get("supervisor", {}) else "initial_backoff"
        problem = f"initial_backoff ({first:g}s) is longer than max_backoff ({longest:g}s)"
        raise fail(f"supervisor.{key}", problem)
    sessions = config.sessions
    if sessions.refresh_token_lifetime <= sessions.access_token_lifetime:
        problem = f"must be longer than access_token_lifetime ({sessions.access_token_lifetime:g}s)"
        raise fail("sessions.refresh_token_lifetime", problem)
    taken: dict[int, str] = {}  # port -> whose it is, as an error names it

    def claim(port: int, key: str, what: str, owner: str) -> None:
        if taken.setdefault(port, owner) != owner:
            raise fail(key, f"{what} is already used by {taken[port]}")

    for name, svc in config.services.items():  # every replica's port: port + k * replica_port_step
        for k in range(svc.replicas if svc.port else 0):
            port, replica = svc.replica_port(k), f" (replica {k}: port + {k} * replica_port_step)" * bool(k)
            if port > 65535:
                raise fail(f"services.{name}.replicas", f"replica {k} would listen on port {port}")
            owner = f"services.{name}{replica or '.port'}"
            claim(port, f"services.{name}.port", f"port {port}{replica}", owner)
    gateway, offset, metrics = config.gateway, config.telemetry.admin_port_offset, config.telemetry.metrics
    if gateway.enabled and gateway.port:
        claim(gateway.port, "gateway.port", f"port {gateway.port}", "gateway.port")
        if offset and metrics and gateway.port + offset <= 65535:
            taken.setdefault(gateway.port + offset, "the gateway's admin port (gateway.port + offset)")
    services: dict[str, ServiceConfig] = {}
    for name, svc in config.services.items():  # admin ports: its own `admin_port`, else port + offset
        key, own = f"services.{name}.admin_port", "admin_port" in tree["services"][name]
        admin = (svc.admin_port if own else svc.port and offset and svc.port + offset) if metrics else 0
        for k in range((svc.replicas if svc.port else 1) if admin else 0):
            if (port := admin + k * svc.replica_port_step) > 65535:
                raise fail(key, f"admin port {port} is above 65535")
            claim(port, key, f"admin port {port}", key)
        services[name] = replace(svc, admin_port=admin)
    base = config.source.resolve().parent
    return replace(
        config,
        data_dir=base / config.data_dir,
        tls=replace(tls, dir=base / tls.dir) if tls.dir else tls,
        sessions=replace(sessions, keys_dir=base / sessions.keys_dir) if sessions.keys_dir else sessions,
        services=services,
    )


def _config_error(error: ErrorDetails, origins: dict[tuple[str, ...], str], source: str) -> ConfigError:
    """Pydantic's error as ours: its location is the key path, its input tells file from environment."""
    path = [str(part) for part in error["loc"] if part != "[key]"]
    kind, got, table = error["type"], error.get("input"), MeshConfig
    for part in path[:-1]:  # down to the table's dataclass (a mapping's key steps over to its values' class)
        fields = getattr(table, "__pydantic_fields__", None)
        table = fields[part].annotation if fields is not None else get_args(table)[-1]
    fields = getattr(table, "__pydantic_fields__", {})
    if kind == "value_error":
        problem = str(error.get("ctx", {}).get("error", error["msg"]))
    elif kind == "unexpected_keyword_argument":
        hint = _closest(path[-1], [key for key in fields if key not in _FILLED_IN])
        problem = "unknown key" + (f" (did you mean '{hint}'?)" if hint else "")
    elif kind == "missing":
        problem = f"missing ({fields[path[-1]].description})"
    elif kind in ("greater_than", "greater_than_equal", "less_than_equal"):  # 'an integer from 1 to 5'
        info = fields[path[-1]]
        c = {name: getattr(m, name) for m in info.metadata for name in ("gt", "ge", "le") if hasattr(m, name)}
        words = {"gt": "above {}, up", "ge": "from {}" if "le" in c else "of at least {}", "le": "to {}"}
        bounds = " ".join(words[name].format(limit) for name, limit in c.items())
        problem = f"expected {'an integer' if info.annotation is int else 'a number'} {bounds}, got {got!r}"
    else:  # a strict type's value of another type, or a table where a value is given
        expected = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(kind.split("_")[0])
        problem = f"expected {expected or 'a table'}, got {got!r}"
    return ConfigError(_origin(origins, path, source), _key(path), problem)


def _origin(origins: dict[tuple[str, ...], str], path: list[str], source: str) -> str:
    """The environment variable that set the value at `path` (or a table above it), else the file."""
    return next((f"environment {var}" for at, var in origins.items() if tuple(path[: len(at)]) == at), source)


def _key(path: list[str]) -> str:
    """`client.methods."pkg.Service/Method".timeout`: parts that are not bare TOML keys are quoted."""
    return ".".join(part if re.fullmatch(r"[A-Za-z0-9_*-]+", part) else f'"{part}"' for part in path)


def _is_ip(host: str) -> bool:
    try:
        return bool(ipaddress.ip_address(host))
    except ValueError:
        return False


def _closest(name: str, options: tuple[str, ...] | list[str]) -> str | None:
    return next(iter(difflib.get_close_matches(name, options, n=1)), None)
