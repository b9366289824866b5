"""Replicas in the mesh file: their ports, how clients name them all, how `mesh status` lists them."""

from __future__ import annotations

import pytest

from services.mesh.status import Member, format_table, status
from services.runtime.config import load_config
from services.runtime.errors import ConfigError
from services.runtime.replicas import check_replica, replicas_of, target

from ..conftest import write_mesh_file

DEFAULT_PORTS = "".join(
    f"[services.{name}]\nport = {port}\n"
    for name, port in [("passengers", 50051), ("drivers", 50052), ("trips", 50053), ("billing", 50054)]
)


def load(tmp_path, text: str, env: dict[str, str] | None = None):
    return load_config(write_mesh_file(tmp_path, text), env=env or {})


def test_one_replica_by_default_reached_as_before(tmp_path):
    config = load(tmp_path, DEFAULT_PORTS)
    passengers = config.service("passengers")

    assert passengers.replicas == 1
    assert [r.name for r in replicas_of([passengers])] == ["passengers"]
    assert target(passengers) == "ipv4:127.0.0.1:50051"


def test_replicas_listen_a_step_of_ten_apart_so_the_default_ports_stay_free(tmp_path):
    config = load(tmp_path, DEFAULT_PORTS, env={"MESH_SERVICES__PASSENGERS__REPLICAS": "3"})
    passengers = config.service("passengers")

    assert [(r.name, r.address) for r in replicas_of(config.services.values())][:4] == [
        ("passengers-0", "127.0.0.1:50051"),
        ("passengers-1", "127.0.0.1:50061"),
        ("passengers-2", "127.0.0.1:50071"),
        ("drivers", "127.0.0.1:50052"),
    ]
    assert target(passengers) == "ipv4:127.0.0.1:50051,127.0.0.1:50061,127.0.0.1:50071"


def test_the_step_is_configurable_and_every_replica_port_is_checked_for_clashes(tmp_path):
    config = load(tmp_path, "replica_port_step = 100\n[services.passengers]\nport = 7000\nreplicas = 2\n")
    assert config.service("passengers").replica_address(1) == "127.0.0.1:7100"

    with pytest.raises(ConfigError) as caught:
        load(
            tmp_path,
            "replica_port_step = 1\n" + DEFAULT_PORTS,
            env={"MESH_SERVICES__PASSENGERS__REPLICAS": "2"},
        )

    assert caught.value.key == "services.drivers.port"
    assert caught.value.problem == (
        "port 50052 is already used by services.passengers (replica 1: port + 1 * replica_port_step)"
    )


def test_a_discovery_target_replaces_the_local_addresses(tmp_path):
    config = load(
        tmp_path,
        '[services.trips]\nport = 50053\ndiscovery = "dns:///trips.default.svc.cluster.local:50053"\n',
    )

    assert target(config.service("trips")) == "dns:///trips.default.svc.cluster.local:50053"


def test_hosts_by_name_and_ipv6_are_reached_through_their_resolvers(tmp_path):
    named = load(tmp_path, '[services.trips]\nport = 50053\nhost = "trips.internal"\n')
    six = load(tmp_path, '[services.trips]\nport = 50053\nhost = "::1"\nreplicas = 2\n')

    assert target(named.service("trips")) == "dns:///trips.internal:50053"
    assert target(six.service("trips")) == "ipv6:[::1]:50053,[::1]:50063"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[services.trips]\nport = 0\nreplicas = 2\n", "services.trips.replicas", "fixed port"),
        ("[services.trips]\nport = 1\nreplicas = 0\n", "services.trips.replicas", "1 to 64"),
        (
            '[services.trips]\nport = 1\nreplicas = 2\nhost = "trips.internal"\n',
            "services.trips.replicas",
            "IP",
        ),
        ("[services.trips]\nport = 65530\nreplicas = 2\n", "services.trips.replicas", "port 65540"),
        ('[services.trips]\nport = 1\ndiscovery = "trips:50053"\n', "services.trips.discovery", "dns:///"),
        (
            '[services.trips]\nport = 1\ndiscovery = "dns:///trips"\n',
            "services.trips.discovery",
            "gRPC target",
        ),
        ('drain_period = "soon"\n[services.trips]\nport = 1\n', "drain_period", "duration"),
        ("replica_port_step = 0\n[services.trips]\nport = 1\n", "replica_port_step", "1 to 1000"),
    ],
)
def test_bad_replica_settings_are_refused_naming_the_key(tmp_path, text, key, problem):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)

    assert caught.value.key == key
    assert problem in caught.value.problem


def test_a_replicated_service_by_host_name_may_use_discovery(tmp_path):
    config = load(
        tmp_path,
        '[services.trips]\nport = 50053\nreplicas = 3\nhost = "0.0.0.0"\n'
        'discovery = "ipv4:10.0.0.1:50053,10.0.0.2:50053"\n',
    )

    assert target(config.service("trips")) == "ipv4:10.0.0.1:50053,10.0.0.2:50053"


def test_drain_period_defaults_to_half_a_second_and_may_be_off(tmp_path):
    assert load(tmp_path, DEFAULT_PORTS).drain_period == 0.5
    assert load(tmp_path, 'drain_period = "0s"\n' + DEFAULT_PORTS).drain_period == 0.0
    assert load(tmp_path, DEFAULT_PORTS, env={"MESH_DRAIN_PERIOD": "2s"}).drain_period == 2.0


def test_serve_accepts_only_replicas_the_clients_know(tmp_path):
    passengers = load(tmp_path, DEFAULT_PORTS, env={"MESH_SERVICES__PASSENGERS__REPLICAS": "2"}).service(
        "passengers"
    )
    check_replica(passengers, 1)

    with pytest.raises(ConfigError) as caught:
        check_replica(passengers, 2)

    assert caught.value.key == "services.passengers.replicas"
    assert caught.value.problem == "is 2, so --replica must be 0 to 1, not 2"


def test_status_lists_every_replica_even_when_down(tmp_path):
    config = load(
        tmp_path,
        "[services.passengers]\nport = 1\nreplicas = 2\n[services.drivers]\nport = 2\n"
        "[telemetry]\nmetrics = false\n",
    )

    members = status(config)

    assert [(m.service, m.replica, m.address, m.pid, m.health) for m in members] == [
        ("passengers", 0, "127.0.0.1:1", None, "DOWN"),
        ("passengers", 1, "127.0.0.1:11", None, "DOWN"),
        ("drivers", 0, "127.0.0.1:2", None, "DOWN"),
    ]


def test_the_status_table_names_replicas_and_leaves_single_services_alone():
    members = [
        Member("passengers", "127.0.0.1:50051", 10, "SERVING", 0),
        Member("passengers", "127.0.0.1:50061", 11, "NOT_SERVING", 1),
        Member("drivers", "127.0.0.1:50052", None, "DOWN"),
    ]

    assert format_table(members).splitlines() == [
        "SERVICE       ADDRESS          PID  HEALTH       RESTARTS  LAST EXIT",
        "passengers-0  127.0.0.1:50051  10   SERVING      0         -",
        "passengers-1  127.0.0.1:50061  11   NOT_SERVING  0         -",
        "drivers       127.0.0.1:50052  -    DOWN         0         -",
    ]
