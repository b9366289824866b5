"""`mesh up` as a process supervisor: a member that crashes comes back on its port; Ctrl-C still stops all.

Crashes are real (SIGKILL to the pid `mesh status --json` reports); every wait
is bounded and waits for a state (a new pid, a line of output), not a time.
The test where a restarted service reads what it stored runs on both storage
engines (`storage`); the rest are the supervisor's own and run on SQLite.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import pytest

from .conftest import Grpcurl, Mesh, MeshFactory, process_alive, wait_until

pytestmark = pytest.mark.e2e

SERVICE = "rideshare.passengers.v1.PassengerService"
WAIT = 30.0
"""Bound on any wait for the mesh to reach a state."""


def member(mesh: Mesh, service: str = "passengers") -> dict[str, Any]:
    _, members = mesh.status()
    [found] = [m for m in members if m["service"] == service]
    return found


def kill(mesh: Mesh, sig: int = signal.SIGKILL) -> int:
    """Send `sig` to the passengers process; its pid, once it is gone."""
    pid = member(mesh)["pid"]
    assert isinstance(pid, int), mesh.describe()
    os.kill(pid, sig)
    assert wait_until(lambda: not process_alive(pid), WAIT), mesh.describe()
    return pid


def back_after(mesh: Mesh, killed: int) -> dict[str, Any] | None:
    """The passengers member once it is SERVING again as another process, else None."""
    found = member(mesh)
    serving = found["health"] == "SERVING" and found["pid"] not in (None, killed)
    return found if serving else None


def bound(sock: socket.socket, port: int) -> bool:
    """Bind `sock` to `port` if it is free (a killed process's threads may still be closing it)."""
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def test_a_killed_service_is_restarted_on_its_port_and_answers_again(
    mesh_factory: MeshFactory, storage: dict[str, Any], grpcurl: Grpcurl
):
    mesh = mesh_factory(["passengers"], **storage).start()
    created = grpcurl.json(
        mesh.address(),
        f"{SERVICE}/CreatePassenger",
        {"passenger": {"display_name": "Ada Lovelace", "email": "ada@example.com"}},
    )

    killed = kill(mesh)

    assert wait_until(lambda: back_after(mesh, killed), WAIT), mesh.describe()
    restarted = member(mesh)
    assert restarted["address"] == mesh.address()
    assert restarted["restarts"] == 1
    assert restarted["last_exit"] == "killed by SIGKILL"
    assert process_alive(restarted["pid"])
    assert grpcurl.json(mesh.address(), f"{SERVICE}/GetPassenger", {"name": created["name"]}) == created
    out = mesh.stdout()
    assert f"mesh: passengers (pid {killed}) was killed by SIGKILL at " in out
    assert "; restarting it in 0.5s (restart 1)\n" in out
    assert f"mesh: restarted passengers as pid {restarted['pid']} on {mesh.address()} (restart 1)\n" in out
    table = mesh.mesh("status").out
    assert "RESTARTS" in table
    assert "killed by SIGKILL at" in table

    assert mesh.stop() == 0  # checks that no process of this mesh and none of its ports is left
    assert not process_alive(restarted["pid"])
    assert "mesh: stopped\n" in mesh.stdout(), mesh.describe()


def test_ctrl_c_during_the_wait_before_a_restart_stops_at_once_and_cleanly(mesh_factory):
    mesh = mesh_factory(["passengers"], supervisor={"initial_backoff": "30s"}).start()

    killed = kill(mesh)
    assert wait_until(lambda: "restarting it in 30s (restart 1)" in mesh.stdout(), WAIT), mesh.describe()
    waiting = member(mesh)
    assert (waiting["pid"], waiting["health"], waiting["restarts"]) == (None, "DOWN", 0)
    assert waiting["last_exit"] == "killed by SIGKILL"

    assert mesh.stop(signal.SIGINT) == 0  # within the harness's stop bound, far less than the 30 s wait
    assert mesh.processes() == []
    assert "restarted passengers" not in mesh.stdout()
    assert "mesh: stopped\n" in mesh.stdout(), mesh.describe()
    assert not process_alive(killed)


def test_a_port_taken_by_someone_else_is_reported_and_retried_until_it_is_free(mesh_factory):
    mesh = mesh_factory(["passengers"]).start()
    port = mesh.port("passengers")

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the killed server's TIME_WAITs
        # The supervisor is paused until the squatter holds the port, so its restart comes second
        # however slow the machine (a restart backoff alone made this a race).
        mesh.send(signal.SIGSTOP)
        try:
            killed = kill(mesh)
            assert wait_until(lambda: bound(squatter, port), WAIT), "the killed server's port stayed in use"
            squatter.listen()
        finally:
            mesh.send(signal.SIGCONT)
        taken = f"mesh: passengers: port {port} on 127.0.0.1 is taken by another process; trying again in"
        assert wait_until(lambda: taken in mesh.stdout(), WAIT), mesh.describe()
        assert member(mesh)["pid"] is None

    assert wait_until(lambda: back_after(mesh, killed), WAIT), mesh.describe()
    assert member(mesh)["restarts"] == 1
    assert mesh.stop() == 0


def test_a_service_stopped_on_purpose_is_not_restarted(mesh_factory):
    mesh = mesh_factory(["passengers"]).start()

    stopped = kill(mesh, signal.SIGTERM)  # it drains and exits 0, as `kill <pid>` by an operator

    said = f"mesh: passengers (pid {stopped}) exited with code 0 at "
    assert wait_until(lambda: said in mesh.stdout(), WAIT), mesh.describe()
    assert "not restarting it (it stopped cleanly); the rest keep running" in mesh.stdout()
    assert member(mesh)["restarts"] == 0
    assert mesh.processes() == []
    assert mesh.stop() == 0


def test_with_restart_no_a_crashed_service_stays_down_and_mesh_up_fails_at_the_end(mesh_factory):
    mesh = mesh_factory(["passengers"], supervisor={"restart": "no"}).start()

    killed = kill(mesh)

    said = f"mesh: passengers (pid {killed}) was killed by SIGKILL at "
    assert wait_until(lambda: said in mesh.stdout(), WAIT), mesh.describe()
    assert 'not restarting it ([supervisor] restart = "no")' in mesh.stdout()
    assert mesh.processes() == []
    assert mesh.stop() == 1
    assert "mesh: stopped; passengers exited with code -9\n" in mesh.stdout()
