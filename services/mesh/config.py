"""The mesh file: one description of the topology, with environment overrides.

`mesh.toml` at the repo root (or the file named by `MESH_CONFIG`) lists every
service with its port and settings. Any key can be overridden from the
environment as `MESH_` + the key path joined by `__`, upper-cased:
`MESH_DATA_DIR=/tmp/x`, `MESH_CLIENT__TIMEOUT=2s`,
`MESH_SERVICES__PASSENGERS__PORT=6051`. Everything is validated at start; a
problem stops the program with one line naming the file, the key and the problem.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class RetryConfig:
    """Retry policy applied to safe methods (reads and writes carrying a request_id)."""

    max_attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 0.5
    backoff_multiplier: float = 2.0


@dataclass(frozen=True)
class ClientConfig:
    """How services call each other."""

    timeout: float = 5.0
    retry: RetryConfig = field(default_factory=RetryConfig)


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

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

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

    def mesh(self, raw: dict[str, Any], source: Path) -> MeshConfig:
        root = self.table(raw, "", ("host", "data_dir", "log_level", "grace_period", "client", "services"))
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
        for name, body in services_raw.items():
            svc = self.service(name, body, host)
            if svc.port in ports and svc.port != 0:
                raise self.fail(
                    f"services.{name}.port",
                    f"port {svc.port} is already used by services.{ports[svc.port]}",
                    body.get("port"),
                )
            ports[svc.port] = name
            services[name] = svc
        return MeshConfig(
            source=source,
            host=host,
            data_dir=data_dir,
            log_level=log_level,
            grace_period=grace,
            client=self.client(root.get("client")),
            services=services,
        )

    def client(self, raw: Any) -> ClientConfig:
        body = self.table(raw, "client", ("timeout", "retry"))
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
        )

    def service(self, name: str, raw: Any, default_host: str) -> ServiceConfig:
        key = f"services.{name}"
        if not _NAME.match(name):
            raise self.fail(key, "service names are lower_snake_case, 1 to 31 characters", raw)
        body = self.table(raw, key, ("host", "port", "module", "package", "settings"))
        if "port" not in body:
            raise self.fail(f"{key}.port", "missing (every service needs a port)")
        settings = body.get("settings", {})
        if not isinstance(settings, dict):
            raise self.fail(f"{key}.settings", f"expected a table, got {settings!r}", settings)
        return ServiceConfig(
            name=name,
            host=self.string(body.get("host", default_host), f"{key}.host"),
            port=self.integer(body["port"], f"{key}.port", 0, 65535),
            module=self.string(body.get("module", f"services.{name}.app"), f"{key}.module"),
            package=self.string(body.get("package", f"rideshare.{name}.v1"), f"{key}.package"),
            settings=settings,
            source=self.source,
        )


def _closest(name: str, options: tuple[str, ...]) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return found[0] if found else None
