"""The mesh file: one description of the topology, with environment overrides.

`mesh.toml` (or the file named by `MESH_CONFIG`) lists every service with its
port and settings. Any key can be overridden from the environment as `MESH_` +
the key path joined by `__`, upper-cased: `MESH_CLIENT__TIMEOUT=2s`,
`MESH_SERVICES__PASSENGERS__PORT=6051`. A problem stops the program with one
line naming the file (or variable), the key and the problem.

The schema is written once: each table is a frozen pydantic dataclass whose
fields carry the key's type, range and default (dataclasses, not `BaseModel`,
so `dataclasses.replace` and positional construction keep working). What spans
several keys (ports, replicas, admin ports, authz callers) is `_checked` after.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import field, replace
from pathlib import Path
from typing import Annotated, Any, get_args

import grpc
from pydantic import Field, PlainValidator, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import ErrorDetails

from .errors import ConfigError

DEFAULT_FILE = "mesh.toml"
ENV_PREFIX = "MESH_"
#: Variables of the `mesh` tool itself, not config keys.
RESERVED_ENV = frozenset({"MESH_CONFIG", "MESH_SUPERVISED", "MESH_REQUIRE_POSTGRES"})
#: Identities that are not services: the REST bridge and the `mesh` tool itself (health checks).
TOOL_IDENTITIES = ("gateway", "mesh")
RESTART_POLICIES = ("on-failure", "no")
TRACE_SINKS = ("off", "file", "otlp")
STORAGE_BACKENDS = ("sqlite", "postgres")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_STATUS_CODES = tuple(code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ENV_BOOLS = {"true": True, "false": False}
#: Keys the loader fills in itself; a file that sets them has an unknown key.
_FILLED_IN = ("source", "name", "enabled")


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
                return _ENV_BOOLS.get(self.lower(), str(self))
            if kind is int or kind is float:
                return kind(self)
        except ValueError:
            pass
        return str(self)


# -- the kinds of value a key holds: each converts a string from the environment, or says what it expected


def _number(low: float, high: float = math.inf, kind: type = float, above: bool = False) -> PlainValidator:
    """An int (or float) from low to high, or above low; a bool is no number here."""
    noun = "an integer" if kind is int else "a number"
    if above:
        bounds = f"above {low:g}, up to {high:g}"
    elif high == math.inf:
        bounds = f"of at least {low}"
    else:
        bounds = f"from {low} to {high}" if kind is int else f"from {low:g} to {high:g}"

    def check(raw: Any) -> Any:
        try:
            value = kind(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise ValueError(f"expected {noun}, got {raw!r}") from None
        valid = isinstance(value, int if kind is int else int | float) and not isinstance(value, bool)
        if not valid or not low <= value <= high or (above and value == low):
            raise ValueError(f"expected {noun} {bounds}, got {raw!r}")
        return kind(value)

    return PlainValidator(check)


def _duration(zero: bool = False, longest: float = math.inf) -> PlainValidator:
    """'250ms', '5s', '1m', '12h', '30d' or a number of seconds; positive (or 0, meaning off, where
    `zero`), and at most `longest` seconds."""

    def check(raw: Any) -> float:
        seconds = -1.0
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            seconds = float(raw)
        elif isinstance(raw, str) and (match := _DURATION.match(raw.strip())):
            seconds = float(match[1]) * _SECONDS[match[2]]
        if seconds > longest:
            raise ValueError(f"expected a duration of at most {longest:g}s, got {raw!r}")
        if seconds > 0 or (zero and seconds == 0):
            return seconds
        raise ValueError(f"expected a positive duration like '250ms', '5s' or '1m', got {raw!r}")

    return PlainValidator(check)


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


def _or_none(kind: PlainValidator) -> PlainValidator:
    """The same check, letting None (the default: not given) through."""
    return PlainValidator(lambda raw: None if raw is None else kind.func(raw))  # type: ignore[call-arg]


def _strings(raw: Any) -> tuple[str, ...] | None:
    """A list of non-empty strings; from the environment, comma-separated."""
    items = [part.strip() for part in raw.split(",") if part.strip()] if isinstance(raw, str) else raw
    valid = isinstance(items, list | tuple) and all(isinstance(item, str) and item for item in items)
    return tuple(items) if valid else None


_TEXT = _kind(lambda raw: str(raw) if isinstance(raw, str) and raw else None, "a non-empty string")
_FLAG = _kind(
    lambda raw: (
        raw if isinstance(raw, bool) else _ENV_BOOLS.get(raw.lower()) if isinstance(raw, _EnvValue) else None
    ),
    "true or false",
)
_PATH = _kind(
    lambda raw: raw if isinstance(raw, Path) else Path(raw) if isinstance(raw, str) and raw else None,
    "a non-empty string",
)
Port = Annotated[int, _number(0, 65535, int)]
Seconds = Annotated[float, _duration()]
Text = Annotated[str, _TEXT]
Flag = Annotated[bool, _FLAG]
Names = Annotated[tuple[str, ...], _kind(_strings, "a list of non-empty strings")]
ServiceName = Annotated[str, _matching(r"^[a-z][a-z0-9_]{0,30}$", "lower_snake_case, 1 to 31 characters")]
#: `[client.methods."<selector>"]`: a fully qualified service, optionally with a method.
Selector = Annotated[
    str,
    _matching(
        r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*\.[A-Z][A-Za-z0-9]*(/[A-Z][A-Za-z0-9]*)?$",
        "'package.Service/Method' or 'package.Service'",
    ),
]
FaultMethod = Annotated[str, _matching(r"^(\*|[A-Z][A-Za-z0-9]*)$", "a method name, or '*' for all")]
#: `discovery`: targets gRPC resolves by itself, DNS (e.g. a Kubernetes headless service) or address lists.
_TARGET = _matching(
    r"^(dns:(//[^/\s]*/)?[A-Za-z0-9.-]+:\d{1,5}|ipv4:\d{1,3}(\.\d{1,3}){3}:\d{1,5}(,\d{1,3}(\.\d{1,3}){3}:\d{1,5})*"
    r"|ipv6:\[[0-9A-Fa-f:.]+\]:\d{1,5}(,\[[0-9A-Fa-f:.]+\]:\d{1,5})*)$",
    "a gRPC target like 'dns:///trips.default.svc.cluster.local:50053' or 'ipv4:10.0.0.1:50053,...'",
)

# -- the tables of mesh.toml (its comments say what each key is for; these say why where it is not plain) --


@dataclass(frozen=True, config={"extra": "forbid"})
class RetryConfig:
    """Retry policy applied to safe methods (reads and writes carrying a request_id)."""

    max_attempts: Annotated[int, _number(1, 5, int)] = 4
    """gRPC caps attempts at 5; 1 turns retries off."""
    initial_backoff: Seconds = 0.05
    max_backoff: Seconds = 0.5
    backoff_multiplier: Annotated[float, _number(1.0)] = 2.0


@dataclass(frozen=True, config={"extra": "forbid"})
class RetryBudgetConfig:
    """gRPC `retryThrottling` (per target): retries stop while the tokens are at or below half.

    Each failed attempt costs a token, each success earns `token_ratio`. 100 tokens
    absorb the burst of failures a killed replica causes under load (10, gRPC's
    example value, did not; see docs/architecture.md "Traffic").
    """

    max_tokens: Annotated[int, _number(1, 1000, int)] = 100
    token_ratio: Annotated[float, _number(0.001, 1)] = 0.1


@dataclass(frozen=True, config={"extra": "forbid"})
class OutlierDetectionConfig:
    """Client-side ejection of a replica that fails too many calls (`outlier_detection_experimental`).

    Every non-OK status counts as a failure (grpc-core does not tell an application
    error from a broken replica), hence the high threshold and the volume floor.
    """

    enabled: Flag = True
    interval: Seconds = 0.25
    """Short, so a replica failing every call is ejected before the retry budget runs out (measured)."""
    base_ejection_time: Seconds = 10.0
    max_ejection_percent: Annotated[int, _number(1, 100, int)] = 50
    failure_threshold: Annotated[int, _number(1, 100, int)] = 50
    request_volume: Annotated[int, _number(1, 1_000_000, int)] = 5


@dataclass(frozen=True, config={"extra": "forbid"})
class MethodPolicy:
    """`[client.methods."pkg.Service/Method"]` (or a whole `"pkg.Service"`): overrides for those calls.

    Selectors are checked against the contracts when clients start (traffic.py).
    """

    timeout: Annotated[float | None, _or_none(_duration())] = None
    retry: Annotated[bool | None, _or_none(_FLAG)] = None
    """False: never retry; True: insist it is safe (checked against the contract at start)."""


@dataclass(frozen=True, config={"extra": "forbid"})
class ClientConfig:
    """How services call each other."""

    timeout: Seconds = 5.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    retry_budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)
    health_checks: Flag = True
    outlier_detection: OutlierDetectionConfig = field(default_factory=OutlierDetectionConfig)
    methods: Mapping[Selector, MethodPolicy] = field(default_factory=dict)


@dataclass(frozen=True, config={"extra": "forbid"})
class FaultConfig:
    """`[services.<name>.faults.<Method>]`: make a method slow or fail on purpose (see faults.py)."""

    delay: Annotated[float, _duration(zero=True)] = 0.0
    abort: Annotated[str | None, _or_none(_one_of(_STATUS_CODES, "a status code name", str.upper))] = None
    percent: Annotated[float, _number(0, 100, above=True)] = 100.0

    @model_validator(mode="after")
    def _does_something(self) -> FaultConfig:
        if not self.delay and self.abort is None:
            raise ValueError("a fault needs a delay, an abort, or both")
        return self


@dataclass(frozen=True, config={"extra": "forbid"})
class RateLimitConfig:
    """The token bucket every API key gets unless the key sets its own."""

    requests_per_second: Annotated[float, _number(0.001)] = 10.0
    burst: Annotated[int, _number(1, 1_000_000, int)] = 20


@dataclass(frozen=True, config={"extra": "forbid"})
class GatewayConfig:
    """The REST bridge (`[gateway]`): where it listens and the limits it enforces."""

    host: Text = "127.0.0.1"
    port: Port = 8080
    max_body_bytes: Annotated[int, _number(1, 2**31, int)] = 1024 * 1024
    max_timeout: Seconds = 60.0
    cors_origins: Names = ()
    sse_keepalive: Annotated[float, _duration(zero=True)] = 15.0
    """Proxies close quiet connections (nginx and most load balancers after 60 s); 0: never."""
    # What one client may cost (services/gateway/edge.py, docs/threat-model.md).
    max_header_bytes: Annotated[int, _number(1024, 2**24, int)] = 64 * 1024
    """Request line + headers; past it 431 (Envoy's edge default is 60 KiB)."""
    max_url_bytes: Annotated[int, _number(256, 2**24, int)] = 8 * 1024
    """The request target (path and query); past it 414."""
    header_timeout: Seconds = 10.0
    """A connection sends its whole head within this of connecting (or of its first byte): else 408."""
    body_timeout: Seconds = 30.0
    """Longest silence while a request body is incomplete: else 408."""
    idle_timeout: Seconds = 5.0
    """A keep-alive connection with no request for this long is closed."""
    max_connections: Annotated[int, _number(1, 1_000_000, int)] = 1000
    """Open connections; one more is answered 503 with Retry-After and closed."""
    max_in_flight: Annotated[int, _number(1, 1_000_000, int)] = 32
    """Unary calls upstream at once; the next ones wait (see max_queue_wait), else 503 + Retry-After."""
    max_queue_wait: Annotated[float, _duration(zero=True)] = 0.05
    """Longest wait for an in-flight slot (never past the caller's deadline); 0: refuse at once."""
    max_streams_per_key: Annotated[int, _number(1, 1_000_000, int)] = 100
    """Streams (any kind) open at once per API key; one more is 429 + Retry-After."""
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    enabled: bool = False
    """Whether the mesh file has a `[gateway]` table, so `mesh up` starts the gateway (set by the loader)."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, config={"extra": "forbid"})
class TlsConfig:
    """Mutual TLS between every member of the mesh (`[tls]`, or `tls = true`); see certs.py."""

    enabled: Flag = False
    dir: Annotated[Path | None, _or_none(_PATH)] = None
    """None: `<data_dir>/certs`."""
    trust_domain: Annotated[
        str, _matching(r"^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$", "a SPIFFE trust domain")
    ] = "rideshare.local"


@dataclass(frozen=True, config={"extra": "forbid"})
class SessionsConfig:
    """`[sessions]`: passengers and drivers signing in (sessions.py), and the tokens they get (tokens.py).

    An access token cannot be revoked, only outlived: its lifetime is how long a
    stolen one works, and how long a retired signing key must still be accepted.
    """

    access_token_lifetime: Annotated[float, _duration(longest=86400.0)] = 900.0
    refresh_token_lifetime: Annotated[float, _duration(longest=365 * 86400.0)] = 30 * 86400.0
    keys_dir: Annotated[Path | None, _or_none(_PATH)] = None
    """None: `<data_dir>/signing-keys`."""


@dataclass(frozen=True, config={"extra": "forbid"})
class SupervisorConfig:
    """`[supervisor]`: how `mesh up` restarts a member that exits on its own (supervisor.py).

    The delays are systemd's Restart=on-failure with Kubernetes' CrashLoopBackOff:
    the first restart comes quickly, a member that keeps crashing waits twice as
    long each time up to `max_backoff`, and one that stayed up `reset_after` is
    forgiven its earlier crashes.
    """

    restart: Annotated[str, _one_of(RESTART_POLICIES)] = "on-failure"
    initial_backoff: Seconds = 0.5
    max_backoff: Seconds = 30.0
    reset_after: Seconds = 60.0


@dataclass(frozen=True, config={"extra": "forbid"})
class TelemetryConfig:
    """`[telemetry]`: Prometheus metrics on each process's admin port, and OpenTelemetry traces."""

    metrics: Flag = True
    admin_host: Text = "127.0.0.1"
    """Where admin ports listen: this machine only, unless a scraper elsewhere needs them ("0.0.0.0")."""
    admin_port_offset: Port = 1000
    traces: Annotated[str, _one_of(TRACE_SINKS)] = "file"
    otlp_endpoint: Annotated[str | None, _or_none(_matching(r"^https?://[^/\s]+", "a URL"))] = None
    sample_ratio: Annotated[float, _number(0, 1)] = 0.01
    """A recorded span costs ~35 us; a call continues its caller's decision."""

    @model_validator(mode="before")
    @classmethod
    def _endpoint_implies_otlp(cls, raw: Any) -> Any:
        return {"traces": "otlp", **raw} if isinstance(raw, dict) and "otlp_endpoint" in raw else raw


@dataclass(frozen=True, config={"extra": "forbid"})
class StorageConfig:
    """`[storage]`, and `[services.<name>.storage]` key by key over it: where a service keeps its data.

    SQLite (`<data_dir>/<name>/<name>.db`) by default; PostgreSQL for replicas on
    several hosts, a database per service when the dsn says `{service}`.
    """

    backend: Annotated[str, _one_of(STORAGE_BACKENDS)] = "sqlite"
    dsn: Annotated[str, _matching(r"^postgres(ql)?://", "a postgresql:// URL")] = (
        "postgresql://postgres@127.0.0.1:5432/{service}"
    )
    pool_min: Annotated[int, _number(0, 1000, int)] = 1
    pool_max: Annotated[int, _number(1, 1000, int)] = 10
    statement_timeout: Seconds = 5.0
    connect_timeout: Seconds = 5.0
    """Also how long a call waits for a pooled connection before it is UNAVAILABLE."""

    @model_validator(mode="after")
    def _pool(self) -> StorageConfig:
        if self.pool_min > self.pool_max:
            raise ValueError(f"pool_min ({self.pool_min}) is more than pool_max ({self.pool_max})")
        return self

    def dsn_for(self, service: str) -> str:
        return self.dsn.replace("{service}", service)


@dataclass(frozen=True, config={"extra": "forbid"})
class ServiceConfig:
    """One service of the mesh (`[services.<name>]`): where it listens and its own settings."""

    name: str
    host: Text
    port: Annotated[Port, Field(description="every service needs a port")]
    module: Text
    package: Text
    settings: Mapping[str, Any]
    source: str = "mesh config"
    """The file these values came from, for error messages."""
    authz: Mapping[str, Names] = field(default_factory=dict)
    """Method selector -> callers allowed (checked against the contract in authz.py)."""
    admin_port: Port = 0
    """Where this process serves /metrics (replicas: + their offset from `port`); 0: not served."""
    replicas: Annotated[int, _number(1, 64, int)] = 1
    replica_port_step: Annotated[int, _number(1, 1000, int)] = 10
    """The top-level `replica_port_step`: replica k listens on `port + k * replica_port_step`."""
    discovery: Annotated[str | None, _or_none(_TARGET)] = None
    faults: Mapping[FaultMethod, FaultConfig] = field(default_factory=dict)
    storage: StorageConfig = field(default_factory=StorageConfig)

    @field_validator("faults", mode="before")
    @classmethod
    def _faults_from_env(cls, raw: Any) -> Any:
        """`Method: key=value, ...; Method: ...` from the environment, as tables."""
        if not isinstance(raw, _EnvValue):
            return raw
        tables: dict[str, dict[str, _EnvValue]] = {}
        for entry in filter(str.strip, raw.split(";")):
            method, colon, rest = entry.partition(":")
            pairs = [item.partition("=") for item in rest.split(",")]
            if not colon or not all(equals for _, equals, _ in pairs):
                example = "'QuoteFare: abort=UNAVAILABLE, delay=200ms, percent=50; ...'"
                raise ValueError(f"expected tables, or from the environment {example}, got {raw!r}")
            tables[method.strip()] = {
                key.strip(): _EnvValue(value.strip().removesuffix("%"), raw.variable)
                for key, _, value in pairs
            }
        return tables

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
            where, value = f"environment {value.variable}", value.parse(kind)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problem = f"expected {kind.__name__}, got {value!r}"
            raise ConfigError(where, f"services.{self.name}.settings.{key}", problem)
        return value


@dataclass(frozen=True, config={"extra": "forbid"})
class MeshConfig:
    """The whole mesh file, validated."""

    source: Path
    """The file read (set by the loader)."""
    host: Text = "127.0.0.1"
    data_dir: Annotated[Path, _PATH] = Path("var")
    log_level: Annotated[str, _one_of(_LOG_LEVELS, fold=str.lower)] = "info"
    grace_period: Seconds = 5.0
    drain_period: Annotated[float, _duration(zero=True)] = 0.5
    """How long a stopping server stays up NOT_SERVING, while clients watch its health, before it stops."""
    replica_port_step: Annotated[int, _number(1, 1000, int)] = 10
    client: ClientConfig = field(default_factory=ClientConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Every service's, unless its own table says otherwise (checked first, so errors name it here)."""
    services: Mapping[ServiceName, ServiceConfig] = field(default_factory=dict)

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_shorthand(cls, raw: Any) -> Any:
        """`tls = true` (or MESH_TLS=true) is short for `[tls] enabled = true`."""
        return {"enabled": raw} if isinstance(raw, bool | _EnvValue) else raw

    def service(self, name: str) -> ServiceConfig:
        if name not in self.services:
            known = ", ".join(self.services) or "none"
            raise ConfigError(str(self.source), f"services.{name}", f"no such service (known: {known})")
        return self.services[name]


_MESH = TypeAdapter(MeshConfig)

# -- the loader ------------------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> MeshConfig:
    """Read the mesh file (`path`, else $MESH_CONFIG, else ./mesh.toml), lay the environment over it
    (`env`, else os.environ), and validate it."""
    source = Path(path or os.environ.get("MESH_CONFIG") or Path.cwd() / DEFAULT_FILE)
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problem = "file not found (set MESH_CONFIG or run from the repo root)"
        raise ConfigError(str(source), "-", problem) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(source), "-", f"not valid TOML: {exc}") from None
    _apply_env(raw, os.environ if env is None else env)
    tree = _filled_in(raw, source)
    try:
        config = _MESH.validate_python(tree)
    except ValidationError as exc:
        raise _config_error(exc.errors()[0], tree, str(source)) from None
    return _checked(config, tree)


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Write `MESH_A__B=v` into raw["a"]["b"] as a string; the key's kind converts it."""
    for name, value in env.items():
        path = name.removeprefix(ENV_PREFIX).lower().split("__")
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV or not all(path):
            continue
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = _EnvValue(value, name)


def _filled_in(raw: dict[str, Any], source: Path) -> dict[str, Any]:
    """The tree plus what the file does not say itself: each service's name, module and package, the
    shared host and replica_port_step, the source, and whether the gateway has a table."""
    services: Any = raw.get("services")
    gateway = raw.get("gateway")
    tables = list(services.items()) if isinstance(services, dict) else []
    for path, table in [([], raw), (["gateway"], gateway), *((["services", n], t) for n, t in tables)]:
        if isinstance(table, dict) and (given := [key for key in _FILLED_IN if key in table]):
            raise ConfigError(
                _origin(raw, [*path, given[0]], str(source)), _key([*path, given[0]]), "unknown key"
            )
    host = raw.get("host", MeshConfig.host)
    step = raw.get("replica_port_step", MeshConfig.replica_port_step)
    storage = raw.get("storage", {})
    for name, table in tables:
        if isinstance(table, dict):
            defaults = {"module": f"services.{name}.app", "package": f"rideshare.{name}.v1", "settings": {}}
            if isinstance(storage, dict) and isinstance(own := table.get("storage", {}), dict):
                defaults["storage"] = {**storage, **own}  # the service's keys over the shared ones
                table = {k: v for k, v in table.items() if k != "storage"}
            filled = {"host": host, "replica_port_step": step, **defaults, **table}
            services[name] = {**filled, "name": name, "source": str(source)}
    if isinstance(gateway, dict) or gateway is None:
        raw["gateway"] = {"host": host, **(gateway or {}), "enabled": gateway is not None}
    return {**raw, "source": source}


def _checked(config: MeshConfig, tree: dict[str, Any]) -> MeshConfig:
    """What spans several keys: replicas, authz callers, telemetry, backoffs, ports; then the paths
    relative to the file and the admin ports."""

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(_origin(tree, key.split("."), str(config.source)), key, problem)

    if not config.services:
        raise fail("services", "expected at least one [services.<name>] table")
    known, tls = (*config.services, *TOOL_IDENTITIES), config.tls
    for name, svc in config.services.items():
        if svc.replicas > 1 and svc.port == 0:
            raise fail(f"services.{name}.replicas", "more than one replica needs a fixed port (not 0)")
        if svc.replicas > 1 and svc.discovery is None and not _is_ip(svc.host):
            problem = f"more than one replica needs `host` to be an IP address, not {svc.host!r} (clients "
            raise fail(f"services.{name}.replicas", problem + "list ipv4:/ipv6: addresses), or a `discovery`")
        if tls.enabled and name in TOOL_IDENTITIES:
            raise fail(
                f"services.{name}", f"'{name}' is the identity of the {name} tool with tls on; rename it"
            )
        if svc.authz and not tls.enabled:
            problem = "authorization rules need tls (callers are identified by their certificates)"
            raise fail(f"services.{name}.authz", problem + "; set [tls] enabled = true or remove the rules")
        for selector, caller in ((s, c) for s, cs in svc.authz.items() for c in cs if c not in (*known, "*")):
            hint = f"; did you mean '{h}'?" if (h := _closest(caller, known)) else ""
            problem = f"unknown caller {caller!r} (callers: the services, gateway, mesh or '*'){hint}"
            raise fail(f"services.{name}.authz.{selector}", problem)
    traces, endpoint = config.telemetry.traces, config.telemetry.otlp_endpoint
    if traces == "otlp" and endpoint is None:
        raise fail("telemetry.otlp_endpoint", "missing (traces = 'otlp' sends spans there)")
    if traces != "otlp" and endpoint is not None:
        raise fail("telemetry.otlp_endpoint", f"only used with traces = 'otlp', not {traces!r}")
    first, longest = config.supervisor.initial_backoff, config.supervisor.max_backoff
    if longest < first:
        key = "max_backoff" if "max_backoff" in tree.get("supervisor", {}) else "initial_backoff"
        raise fail(
            f"supervisor.{key}", f"initial_backoff ({first:g}s) is longer than max_backoff ({longest:g}s)"
        )
    sessions = config.sessions
    if sessions.refresh_token_lifetime <= sessions.access_token_lifetime:
        problem = f"must be longer than access_token_lifetime ({sessions.access_token_lifetime:g}s)"
        raise fail("sessions.refresh_token_lifetime", problem)
    base = config.source.resolve().parent
    return replace(
        config,
        data_dir=base / config.data_dir,
        tls=replace(tls, dir=base / tls.dir) if tls.dir else tls,
        sessions=replace(sessions, keys_dir=base / sessions.keys_dir) if sessions.keys_dir else sessions,
        services=_ports(config, tree, fail),
    )


def _ports(
    config: MeshConfig, tree: dict[str, Any], fail: Callable[[str, str], ConfigError]
) -> dict[str, ServiceConfig]:
    """Each port once: every replica's, the gateway's, then the admin (/metrics) ports: a service's own
    `admin_port`, else port + offset (0 with metrics off); replica k's is admin_port + k * step."""
    owners: dict[int, tuple[str, str]] = {}  # port -> the service, and which replica
    for name, svc in config.services.items():
        for k in range(svc.replicas if svc.port else 0):
            port, mine = svc.replica_port(k), f" (replica {k}: port + {k} * replica_port_step)" if k else ""
            if port > 65535:
                raise fail(f"services.{name}.replicas", f"replica {k} would listen on port {port}")
            if port in owners:
                raise fail(
                    f"services.{name}.port",
                    f"port {port}{mine} is already used by services.{''.join(owners[port])}",
                )
            owners[port] = (name, mine)
    gateway, offset, metrics = config.gateway, config.telemetry.admin_port_offset, config.telemetry.metrics
    if gateway.enabled and (port := gateway.port) in owners:
        raise fail("gateway.port", f"port {port} is already used by services.{''.join(owners[port])}")
    taken = {port: f"services.{name}.port" for port, (name, _) in owners.items()}
    if gateway.enabled and gateway.port:
        taken[gateway.port] = "gateway.port"
        if offset and metrics and gateway.port + offset <= 65535:
            taken.setdefault(gateway.port + offset, "the gateway's admin port (gateway.port + offset)")
    resolved: dict[str, ServiceConfig] = {}
    for name, svc in config.services.items():
        key, step = f"services.{name}.admin_port", svc.replica_port_step
        admin = (
            svc.admin_port
            if "admin_port" in tree["services"][name]
            else svc.port and offset and svc.port + offset
        )
        admin = admin if metrics else 0
        replicas = (svc.replicas if svc.port else 1) if admin else 0
        if admin + (replicas - 1) * step > 65535:
            raise fail(
                key, f"admin port {admin + (replicas - 1) * step} (of the last replica) is above 65535"
            )
        for port in range(admin, admin + replicas * step, step):
            if taken.setdefault(port, key) != key:
                raise fail(key, f"admin port {port} is already used by {taken[port]}")
        resolved[name] = replace(svc, admin_port=admin)
    return resolved


# -- errors: one line naming the file or variable, the key and the problem -------------------------------


def _config_error(error: ErrorDetails, tree: dict[str, Any], source: str) -> ConfigError:
    """Pydantic's error as ours: its location is the key path, its input tells file from environment."""
    path = [str(part) for part in error["loc"] if part != "[key]"]
    if error["type"] == "value_error":
        problem = str(error.get("ctx", {}).get("error", error["msg"]))
    elif error["type"] == "unexpected_keyword_argument":
        keys = [key for key in _table_at(path[:-1]).__pydantic_fields__ if key not in _FILLED_IN]
        problem = "unknown key" + (f" (did you mean '{hint}'?)" if (hint := _closest(path[-1], keys)) else "")
    elif error["type"] == "missing":
        problem = f"missing ({_table_at(path[:-1]).__pydantic_fields__[path[-1]].description})"
    else:  # a table where a value is given
        problem = f"expected a table, got {error.get('input')!r}"
    return ConfigError(_origin(tree, path, source), _key(path), problem)


def _table_at(path: list[str]) -> Any:
    """The dataclass of the table at `path` (a mapping's key steps over to its values' class)."""
    kind: Any = MeshConfig
    for part in path:
        fields = getattr(kind, "__pydantic_fields__", None)
        kind = fields[part].annotation if fields is not None else get_args(kind)[-1]
    return kind


def _origin(tree: Any, path: list[str], source: str) -> str:
    """The environment variable that set the value at `path` (or a table above it), else the file."""
    node = tree
    for part in path:
        if isinstance(node, _EnvValue):
            break
        node = node.get(part) if isinstance(node, dict) else None
    return f"environment {node.variable}" if isinstance(node, _EnvValue) else source


def _key(path: list[str]) -> str:
    """`client.methods."pkg.Service/Method".timeout`: parts that are not bare TOML keys are quoted."""
    return ".".join(part if re.fullmatch(r"[A-Za-z0-9_*-]+", part) else f'"{part}"' for part in path)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _closest(name: str, options: tuple[str, ...] | list[str]) -> str | None:
    found = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return found[0] if found else None
