"""`mesh up` and `mesh status` as an operator runs them: start, stop, restart, fail, crash."""

from __future__ import annotations

import signal
import socket

import pytest

from tests import postgres

from .conftest import COMMAND_TIMEOUT, wait_until

pytestmark = pytest.mark.e2e

SERVICE = "rideshare.passengers.v1.PassengerService"


def test_status_reports_every_service_serving_while_up_and_down_after_stop(mesh_factory):
    mesh = mesh_factory(["passengers"]).start()

    code, members = mesh.status()
    assert code == 0
    assert [(m["service"], m["address"], m["health"]) for m in members] == [
        ("passengers", mesh.address("passengers"), "SERVING")
    ]
    assert all(isinstance(m["pid"], int) for m in members)

    assert mesh.stop() == 0
    code, members = mesh.status()
    assert code != 0
    assert [(m["service"], m["health"], m["pid"]) for m in members] == [("passengers", "DOWN", None)]


def test_status_shows_a_service_not_serving_while_its_postgres_database_refuses_it_and_why(
    mesh_factory, postgres_databases
):
    storage = {"backend": "postgres", "dsn": postgres_databases.per_service(), "health_interval": "200ms"}
    mesh = mesh_factory(["passengers"], storage=storage).start()
    dsn = postgres_databases.per_service().replace("{service}", "passengers")
    where = f"127.0.0.1:5432/{postgres_databases.prefix}_passengers"

    def health() -> tuple[str, str, str]:
        [member] = mesh.status()[1]
        return member["health"], member["storage"], member["storage_health"]

    assert health() == ("SERVING", where, "reachable")
    with postgres.out_of_reach(dsn):
        assert wait_until(lambda: health()[0] == "NOT_SERVING", COMMAND_TIMEOUT), health()
        assert "is not currently accepting connections" in health()[2]
        table = mesh.mesh("status").out
    assert wait_until(lambda: health() == ("SERVING", where, "reachable"), COMMAND_TIMEOUT), health()
    assert f"passengers  {where}  connection failed: " in table
    assert "storage_unreachable" in mesh.stdout()
    assert "storage_reachable" in mesh.stdout()


def test_sigterm_stops_every_child_cleanly_and_removes_the_state_file(mesh_factory):
    mesh = mesh_factory(["passengers"]).start()
    state = mesh.data_dir / "mesh.json"
    assert state.exists()
    children = mesh.processes()
    assert len(children) == len(mesh.services)

    mesh.send(signal.SIGTERM)

    assert mesh.wait() == 0, mesh.describe()
    assert "mesh: stopped\n" in mesh.stdout()
    assert "exited with code" not in mesh.stdout(), mesh.describe()
    assert not state.exists()
    assert mesh.wait_down(children, timeout=0), "a child outlived `mesh up`"


def test_a_restarted_mesh_keeps_its_data(mesh_factory, grpcurl):
    mesh = mesh_factory(["passengers"]).start()
    created = grpcurl.json(
        mesh.address(),
        f"{SERVICE}/CreatePassenger",
        {"passenger": {"display_name": "Still Here", "email": "still@example.com"}},
    )
    assert mesh.stop() == 0

    mesh.start()

    assert grpcurl.json(mesh.address(), f"{SERVICE}/GetPassenger", {"name": created["name"]}) == created


def test_killed_supervisor_takes_its_children_down(mesh_factory):
    mesh = mesh_factory(["passengers"]).start()
    children = mesh.processes()
    assert children

    mesh.send(signal.SIGKILL)
    mesh.wait()

    # The children notice the closed stdin pipe and stop on their own.
    assert mesh.wait_down(children), mesh.describe()


def test_a_taken_port_is_reported_by_service_and_port_and_nothing_starts(mesh_factory):
    mesh = mesh_factory(["passengers"])
    port = mesh.port("passengers")

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        mesh.spawn()
        code = mesh.wait()
        assert mesh.processes() == []

    assert code != 0
    message = mesh.stderr()
    assert "passengers" in message
    assert str(port) in message
    assert "in use" in message
    assert not (mesh.data_dir / "mesh.json").exists()


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        pytest.param(
            "[services.passengers]\nport = {port}\nprot = 1\n",
            "services.passengers.prot",
            "unknown key",
            id="unknown-key",
        ),
        pytest.param(
            '[services.passengers]\nport = "fifty"\n',
            "services.passengers.port",
            "expected an integer",
            id="port-not-an-integer",
        ),
        pytest.param(
            "[services.passengers]\nport = {port}\ngrace_period = \n",
            "",
            "not valid TOML",
            id="invalid-toml",
        ),
    ],
)
def test_a_broken_mesh_file_fails_with_one_line_naming_file_key_and_problem(mesh_factory, text, key, problem):
    mesh = mesh_factory(["passengers"])
    mesh.config.write_text(f'data_dir = "{mesh.data_dir}"\n' + text.format(port=mesh.port("passengers")))

    mesh.spawn()
    code = mesh.wait()

    assert code != 0
    lines = mesh.stderr().splitlines()
    assert len(lines) == 1, mesh.describe()
    assert str(mesh.config) in lines[0]
    assert key in lines[0]
    assert problem in lines[0]
    assert mesh.processes() == []
    assert not mesh.listening("passengers")


def test_a_service_module_that_does_not_exist_is_named_in_the_error(mesh_factory):
    mesh = mesh_factory({"passengers": {"module": "services.nowhere.app"}})

    mesh.spawn()
    code = mesh.wait()

    assert code != 0
    assert "passengers exited with code 2 before it was serving" in mesh.stderr()
    assert "services.passengers.module: no module named services.nowhere.app" in mesh.stdout()
    assert "Traceback" not in mesh.stdout()
    assert mesh.processes() == []
    assert not mesh.listening("passengers")
