"""mesh.toml: defaults, environment overrides, and a precise error for every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.runtime.config import load_config
from services.runtime.errors import ConfigError

from ..conftest import write_mesh_file

MINIMAL = "[services.passengers]\nport = 6000\n"
TWO = "[services.passengers]\nport = 6000\n\n[services.drivers]\nport = 6001\n"


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    return load_config(write_mesh_file(tmp_path, text), env=env or {})


def test_defaults_fill_everything_but_the_services(tmp_path):
    config = load(tmp_path, MINIMAL)

    assert config.host == "127.0.0.1"
    assert config.data_dir == tmp_path.resolve() / "var"
    assert config.log_level == "info"
    assert config.grace_period == 5.0
    assert config.client.timeout == 5.0
    assert config.client.retry.max_attempts == 4
    assert config.client.retry.initial_backoff == 0.05
    assert config.client.retry.max_backoff == 0.5
    assert config.client.retry.backoff_multiplier == 2.0
    passengers = config.service("passengers")
    assert passengers.port == 6000
    assert passengers.address == "127.0.0.1:6000"
    assert passengers.module == "services.passengers.app"
    assert passengers.package == "rideshare.passengers.v1"
    assert passengers.domain == "passengers.rideshare"
    assert dict(passengers.settings) == {}


def test_values_from_the_file_are_typed(tmp_path):
    config = load(
        tmp_path,
        'host = "0.0.0.0"\ndata_dir = "/srv/mesh"\nlog_level = "DEBUG"\ngrace_period = "1m"\n'
        '[client]\ntimeout = "250ms"\n[client.retry]\nmax_attempts = 1\nbackoff_multiplier = 3\n'
        '[services.passengers]\nport = 6000\nhost = "10.0.0.2"\n',
    )

    assert config.host == "0.0.0.0"
    assert config.data_dir == Path("/srv/mesh")
    assert config.log_level == "debug"
    assert config.grace_period == 60.0
    assert config.client.timeout == 0.25
    assert config.client.retry.max_attempts == 1
    assert config.client.retry.backoff_multiplier == 3.0
    assert config.service("passengers").address == "10.0.0.2:6000"


def test_environment_overrides_the_file(tmp_path):
    config = load(
        tmp_path,
        MINIMAL,
        env={
            "MESH_SERVICES__PASSENGERS__PORT": "6051",
            "MESH_CLIENT__TIMEOUT": "250ms",
            "MESH_CLIENT__RETRY__MAX_ATTEMPTS": "2",
            "MESH_DATA_DIR": "/tmp/elsewhere",
            # the tool's own variables and unrelated ones are not config keys
            "MESH_CONFIG": "/nowhere/mesh.toml",
            "MESH_SUPERVISED": "1",
            "PATH": "/bin",
        },
    )

    assert config.service("passengers").port == 6051
    assert config.client.timeout == 0.25
    assert config.client.retry.max_attempts == 2
    assert config.data_dir == Path("/tmp/elsewhere")


def test_a_quoted_value_in_the_file_is_read_as_its_key_type_like_one_from_the_environment(tmp_path):
    config = load(tmp_path, '[services.passengers]\nport = "6000"\n[client]\nhealth_checks = "false"\n')

    assert config.service("passengers").port == 6000
    assert config.client.health_checks is False


def test_process_environment_is_read_by_default(tmp_path, monkeypatch):
    path = write_mesh_file(tmp_path, MINIMAL)
    monkeypatch.setenv("MESH_SERVICES__PASSENGERS__PORT", "6051")

    assert load_config(path).service("passengers").port == 6051


def test_mesh_config_variable_names_the_file(tmp_path, monkeypatch):
    path = write_mesh_file(tmp_path, MINIMAL)
    monkeypatch.setenv("MESH_CONFIG", str(path))
    monkeypatch.chdir("/")

    assert load_config(env={}).source == path


# (file text, env, where the problem is: "file" or the variable, key, words of the problem)
BAD_INPUT = [
    pytest.param(
        'hots = "x"\n' + MINIMAL, {}, "file", "hots", "unknown key (did you mean 'host'?)", id="unknown"
    ),
    pytest.param(
        "[services.passengers]\nport = 6000\nprot = 1\n",
        {},
        "file",
        "services.passengers.prot",
        "did you mean 'port'?",
        id="unknown-in-service",
    ),
    pytest.param(
        MINIMAL + "[client.retry]\nmax_attempt = 2\n",
        {},
        "file",
        "client.retry.max_attempt",
        "did you mean 'max_attempts'?",
        id="unknown-in-retry",
    ),
    pytest.param(
        MINIMAL + "[client]\nzzz = 1\n", {}, "file", "client.zzz", "unknown key", id="unknown-no-hint"
    ),
    pytest.param(
        MINIMAL,
        {"MESH_CLIENT__TIMOUT": "1s"},
        "MESH_CLIENT__TIMOUT",
        "client.timout",
        "did you mean 'timeout'?",
        id="unknown-from-env",
    ),
    pytest.param(
        MINIMAL, {"MESH_HOTS": "x"}, "MESH_HOTS", "hots", "did you mean 'host'?", id="unknown-top-from-env"
    ),
    pytest.param(
        MINIMAL + 'name = "drivers"\n', {}, "file", "services.passengers.name", "unknown key", id="filled-in"
    ),
    pytest.param(
        MINIMAL + "[gateway]\nenabled = false\n", {}, "file", "gateway.enabled", "unknown key", id="enabled"
    ),
    pytest.param("host = 5\n" + MINIMAL, {}, "file", "host", "expected a non-empty string", id="host-type"),
    pytest.param('host = ""\n' + MINIMAL, {}, "file", "host", "expected a non-empty string", id="host-empty"),
    pytest.param(
        'log_level = "loud"\n' + MINIMAL, {}, "file", "log_level", "expected one of debug", id="log-level"
    ),
    pytest.param("client = 3\n" + MINIMAL, {}, "file", "client", "expected a table", id="client-type"),
    pytest.param(
        MINIMAL + "[client.retry]\nmax_attempts = 9\n",
        {},
        "file",
        "client.retry.max_attempts",
        "expected an integer from 1 to 5, got 9",
        id="attempts-range",
    ),
    pytest.param(
        MINIMAL,
        {"MESH_CLIENT__RETRY__MAX_ATTEMPTS": "three"},
        "MESH_CLIENT__RETRY__MAX_ATTEMPTS",
        "client.retry.max_attempts",
        "expected an integer, got 'three'",
        id="attempts-env",
    ),
    pytest.param(
        MINIMAL + "[client.retry]\nbackoff_multiplier = 0.5\n",
        {},
        "file",
        "client.retry.backoff_multiplier",
        "at least 1.0",
        id="multiplier",
    ),
    pytest.param(
        MINIMAL + "[client.retry]\nbackoff_multiplier = true\n",
        {},
        "file",
        "client.retry.backoff_multiplier",
        "expected a number",
        id="multiplier-bool",
    ),
    pytest.param(
        "[services.passengers]\nport = 70000\n",
        {},
        "file",
        "services.passengers.port",
        "expected an integer from 0 to 65535, got 70000",
        id="port-range",
    ),
    pytest.param(
        "[services.passengers]\nport = -1\n", {}, "file", "services.passengers.port", "got -1", id="port-neg"
    ),
    pytest.param(
        "[services.passengers]\nport = true\n",
        {},
        "file",
        "services.passengers.port",
        "got True",
        id="port-bool",
    ),
    pytest.param(
        MINIMAL,
        {"MESH_SERVICES__PASSENGERS__PORT": "abc"},
        "MESH_SERVICES__PASSENGERS__PORT",
        "services.passengers.port",
        "expected an integer, got 'abc'",
        id="port-env",
    ),
    pytest.param(
        'grace_period = "5 minutes"\n' + MINIMAL,
        {},
        "file",
        "grace_period",
        "expected a positive duration like '250ms', '5s' or '1m', got '5 minutes'",
        id="duration-words",
    ),
    pytest.param(
        'grace_period = "0s"\n' + MINIMAL, {}, "file", "grace_period", "positive", id="duration-zero"
    ),
    pytest.param(
        "grace_period = true\n" + MINIMAL, {}, "file", "grace_period", "got True", id="duration-bool"
    ),
    pytest.param(
        MINIMAL,
        {"MESH_CLIENT__TIMEOUT": "-1s"},
        "MESH_CLIENT__TIMEOUT",
        "client.timeout",
        "positive duration",
        id="duration-env",
    ),
    pytest.param(
        "[services.passengers]\nport = 6000\n\n[services.drivers]\nport = 6000\n",
        {},
        "file",
        "services.drivers.port",
        "port 6000 is already used by services.passengers",
        id="duplicate-port",
    ),
    pytest.param(
        TWO,
        {"MESH_SERVICES__DRIVERS__PORT": "6000"},
        "MESH_SERVICES__DRIVERS__PORT",
        "services.drivers.port",
        "already used by services.passengers",
        id="duplicate-port-env",
    ),
    pytest.param(
        'host = "h"\n', {}, "file", "services", "expected at least one [services.<name>]", id="none"
    ),
    pytest.param("[services]\n", {}, "file", "services", "at least one", id="empty-services"),
    pytest.param(
        "[services.Passengers]\nport = 6000\n",
        {},
        "file",
        "services.Passengers",
        "lower_snake_case",
        id="name-case",
    ),
    pytest.param(
        '[services."9lives"]\nport = 6000\n',
        {},
        "file",
        "services.9lives",
        "lower_snake_case",
        id="name-digit",
    ),
    pytest.param(
        "[services.passengers]\nhost = 'x'\n",
        {},
        "file",
        "services.passengers.port",
        "missing (every service needs a port)",
        id="no-port",
    ),
    pytest.param(
        MINIMAL,
        {"MESH_STORAGE__BACKEND": "postgress"},
        "MESH_STORAGE__BACKEND",
        "storage.backend",
        "expected one of sqlite, postgres, got 'postgress' (did you mean 'postgres'?)",
        id="storage-backend",
    ),
    pytest.param(
        MINIMAL + "[services.passengers.storage]\ndsn = 'mysql://db'\n",
        {},
        "file",
        "services.passengers.storage.dsn",
        "expected a postgresql:// URL",
        id="storage-dsn",
    ),
    pytest.param(
        "[storage]\npool_min = 20\n" + MINIMAL,
        {},
        "file",
        "storage",
        "pool_min (20) is more than pool_max (10)",
        id="storage-pool",
    ),
    pytest.param(
        "[services.passengers]\nport = 6000\nsettings = 3\n",
        {},
        "file",
        "services.passengers.settings",
        "expected a table",
        id="settings-type",
    ),
]


@pytest.mark.parametrize(("text", "env", "where", "key", "problem"), BAD_INPUT)
def test_bad_input_names_file_key_and_problem(tmp_path, text, env, where, key, problem):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)

    error = caught.value
    source = str(tmp_path / "mesh.toml") if where == "file" else f"environment {where}"
    assert error.source == source
    assert error.key == key
    assert problem in error.problem
    assert str(error) == f"{source}: {key}: {error.problem}"


def test_missing_file_says_how_to_find_one(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing, env={})

    assert caught.value.source == str(missing)
    assert "file not found" in caught.value.problem
    assert "MESH_CONFIG" in caught.value.problem


def test_invalid_toml_reports_the_parser_position(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "[services.passengers\nport = 1\n")

    assert caught.value.source == str(tmp_path / "mesh.toml")
    assert caught.value.problem.startswith("not valid TOML: ")
    assert "line 1" in caught.value.problem


def test_unknown_service_lists_the_known_ones(tmp_path):
    config = load(tmp_path, TWO)

    with pytest.raises(ConfigError) as caught:
        config.service("trips")

    assert caught.value.key == "services.trips"
    assert "known: passengers, drivers" in caught.value.problem


def test_two_services_may_both_ask_for_any_free_port(tmp_path):
    config = load(tmp_path, "[services.a]\nport = 0\n[services.b]\nport = 0\n")

    assert [s.port for s in config.services.values()] == [0, 0]


SETTINGS = MINIMAL + '[services.passengers.settings]\nlimit = 10\nratio = 2\nname = "x"\nflag = true\n'


def test_setting_returns_typed_values_and_defaults(tmp_path):
    passengers = load(tmp_path, SETTINGS).service("passengers")

    assert passengers.setting("limit", int, 1) == 10
    ratio = passengers.setting("ratio", float, 1.0)
    assert ratio == 2.0
    assert isinstance(ratio, float)
    assert passengers.setting("flag", bool, False) is True
    assert passengers.setting("absent", str, "fallback") == "fallback"


@pytest.mark.parametrize(
    ("key", "kind", "problem"),
    [
        ("name", int, "expected int, got 'x'"),
        ("flag", int, "expected int, got True"),
        ("limit", str, "expected str, got 10"),
        ("limit", bool, "expected bool, got 10"),
    ],
)
def test_setting_of_the_wrong_type_names_file_and_key(tmp_path, key, kind, problem):
    passengers = load(tmp_path, SETTINGS).service("passengers")

    with pytest.raises(ConfigError) as caught:
        passengers.setting(key, kind, None)

    assert caught.value.source == str(tmp_path / "mesh.toml")
    assert caught.value.key == f"services.passengers.settings.{key}"
    assert caught.value.problem == problem


def test_settings_can_be_overridden_from_the_environment(tmp_path):
    env = {
        "MESH_SERVICES__PASSENGERS__SETTINGS__LIMIT": "25",
        "MESH_SERVICES__PASSENGERS__SETTINGS__RATIO": "0.5",
        "MESH_SERVICES__PASSENGERS__SETTINGS__FLAG": "false",
        "MESH_SERVICES__PASSENGERS__SETTINGS__NAME": "12",
    }
    passengers = load(tmp_path, SETTINGS, env).service("passengers")

    assert passengers.setting("limit", int, 1) == 25
    assert passengers.setting("ratio", float, 1.0) == 0.5
    assert passengers.setting("flag", bool, True) is False
    assert passengers.setting("name", str, "") == "12"


def test_setting_from_the_environment_of_the_wrong_type_names_the_variable(tmp_path):
    env = {"MESH_SERVICES__PASSENGERS__SETTINGS__LIMIT": "lots"}
    passengers = load(tmp_path, SETTINGS, env).service("passengers")

    with pytest.raises(ConfigError) as caught:
        passengers.setting("limit", int, 1)

    assert caught.value.source == "environment MESH_SERVICES__PASSENGERS__SETTINGS__LIMIT"
    assert caught.value.key == "services.passengers.settings.limit"
    assert caught.value.problem == "expected int, got 'lots'"


def test_storage_is_sqlite_unless_chosen_and_a_service_overrides_the_shared_table_key_by_key(tmp_path):
    assert load(tmp_path, TWO).service("drivers").storage.backend == "sqlite"

    config = load(
        tmp_path,
        "[storage]\nbackend = 'postgres'\npool_max = 4\n"
        + TWO
        + "[services.drivers.storage]\ndsn = 'postgresql://app@db.internal/fleet'\n",
        env={"MESH_SERVICES__PASSENGERS__STORAGE__STATEMENT_TIMEOUT": "250ms"},
    )

    passengers, drivers = config.service("passengers").storage, config.service("drivers").storage
    assert (passengers.backend, passengers.pool_max, passengers.statement_timeout) == ("postgres", 4, 0.25)
    assert passengers.dsn_for("passengers") == "postgresql://postgres@127.0.0.1:5432/passengers"
    assert (drivers.backend, drivers.pool_max) == ("postgres", 4)
    assert drivers.dsn_for("drivers") == "postgresql://app@db.internal/fleet"


def test_the_variable_that_requires_postgres_in_tests_is_no_config_key(tmp_path):
    assert load(tmp_path, MINIMAL, env={"MESH_REQUIRE_POSTGRES": "1"}).storage.backend == "sqlite"
