"""Replicas under load, as an operator meets them: status, a killed replica, draining, ejection.

Two replicas of passengers run under `mesh up`; a real mesh client (`load.Load`:
`Clients`, the channels every service uses) calls `GetPassenger` back to back.
Which replica served a call is read from its access log (debug level logs every
call). Every wait is bounded and counts calls, not seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import MESH, Mesh, MeshFactory, clean_env, process_alive, wait_until
from .load import Load

pytestmark = pytest.mark.e2e

SERVICE = "rideshare.passengers.v1.PassengerService"
GET = f"/{SERVICE}/GetPassenger"
WAIT = 30.0
"""Bound on any wait for the mesh or the load to reach a state."""


def served(mesh: Mesh, member: str) -> int:
    """GetPassenger calls `member` (e.g. passengers-1) logged under `mesh up`, whatever their outcome."""
    pattern = re.compile(rf"^{re.escape(member)}\s*\| .*rpc finished.*method={re.escape(GET)}\b", re.M)
    return len(pattern.findall(mesh.stdout()))


def served_alone(process: ByHand) -> int:
    """GetPassenger calls logged by a `mesh serve` started by hand (JSON lines on stderr)."""
    return sum(1 for line in process.stderr().splitlines() if '"rpc finished"' in line and GET in line)


def member(mesh: Mesh, replica: int) -> dict[str, object]:
    _, members = mesh.status()
    [found] = [m for m in members if m["service"] == "passengers" and m["replica"] == replica]
    return found


class ByHand:
    """`mesh serve passengers --replica 1` started by the test, as an operator restarts a replica.

    Its log (JSON lines on stderr) is what `served_alone` counts; it carries MESH_CONFIG,
    so stopping the mesh finds it too if the test did not stop it.
    """

    def __init__(self, mesh: Mesh, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as err:
            self.process = subprocess.Popen(
                [str(MESH), "serve", "passengers", "--replica", "1", "--config", str(mesh.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=clean_env({**mesh.env, **env, "MESH_CONFIG": str(mesh.config.resolve())}),
                cwd=mesh.root,
            )
        self.pid = self.process.pid

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def describe(self) -> str:
        return f"--- replica 1 started by hand, exit {self.process.poll()}\n{self.stderr()}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def by_hand(tmp_path: Path) -> Iterator[Callable[..., ByHand]]:
    """Start replica 1 by hand (`by_hand(mesh, env)`, waits until it serves); stopped after the test."""
    started: list[ByHand] = []

    def start(mesh: Mesh, env: dict[str, str] | None = None) -> ByHand:
        process = ByHand(mesh, env or {}, tmp_path / f"replica-1-{len(started)}.log")
        started.append(process)
        assert wait_until(
            lambda: '"event": "serving"' in process.stderr() or process.process.poll() is not None, WAIT
        ), process.describe()
        assert '"event": "serving"' in process.stderr(), process.describe()
        return process

    yield start
    for process in started:
        process.stop()


def start_replicated(mesh_factory: MeshFactory, grpcurl, **extra: object) -> tuple[Mesh, str]:
    """Two passengers replicas under `mesh up` (every call logged) and one passenger to read."""
    # These tests restart replicas by hand; the supervisor's own restarts are tested in test_mesh_restarts.py.
    mesh = mesh_factory(
        {"passengers": {"replicas": 2}}, log_level="debug", supervisor={"restart": "no"}, **extra
    ).start()
    created = grpcurl.json(
        mesh.address(),
        f"{SERVICE}/CreatePassenger",
        {"passenger": {"display_name": "Grace Hopper", "email": "grace@example.com"}},
    )
    return mesh, created["name"]


@pytest.fixture
def replicated(mesh_factory: MeshFactory, grpcurl) -> tuple[Mesh, str]:
    """Replicas that drain for 20 s when stopped (unless nobody watches)."""
    return start_replicated(mesh_factory, grpcurl, drain_period="20s")


@pytest.fixture(scope="module")
def replicas_to_read(tmp_path_factory: pytest.TempPathFactory, grpcurl) -> Iterator[tuple[Mesh, str]]:
    """The same replicas, shared by the tests that only read them (status, a refused `mesh serve`)."""
    with MeshFactory(tmp_path_factory) as factory:
        yield start_replicated(factory, grpcurl, drain_period="20s")


def test_status_lists_every_replica_with_its_own_port_and_pid(replicas_to_read):
    mesh, _ = replicas_to_read
    step = 10

    code, members = mesh.status()

    assert code == 0
    port = mesh.port("passengers")
    assert [(m["service"], m["replica"], m["address"], m["health"]) for m in members] == [
        ("passengers", 0, f"127.0.0.1:{port}", "SERVING"),
        ("passengers", 1, f"127.0.0.1:{port + step}", "SERVING"),
    ]
    pids = [m["pid"] for m in members]
    assert all(isinstance(p, int) for p in pids)
    assert len(set(pids)) == 2
    table = mesh.mesh("status").out
    assert "passengers-0" in table
    assert "passengers-1" in table


def test_a_killed_replica_costs_no_call_and_gets_traffic_again_once_restarted(replicated, by_hand):
    mesh, name = replicated
    load = Load(mesh.config, name).start()
    try:
        assert load.wait(
            lambda: served(mesh, "passengers-0") > 50 and served(mesh, "passengers-1") > 50, WAIT
        )
        victim = member(mesh, 1)["pid"]
        assert isinstance(victim, int)

        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: not process_alive(victim), WAIT)
        assert load.wait_calls(500, WAIT)
        before = served(mesh, "passengers-0")

        restarted = by_hand(mesh)
        assert load.wait(lambda: served_alone(restarted) > 50, WAIT), restarted.describe()
        assert load.wait_calls(200, WAIT)
    finally:
        load.stop()

    assert load.failures == {}, load.failures
    assert served(mesh, "passengers-0") > before, "the surviving replica kept serving"
    print(
        f"\nkill under load: {load.calls} calls, 0 failed; restarted replica served {served_alone(restarted)}"
    )


def test_a_replica_stopped_under_load_drains_and_costs_no_call(mesh_factory, grpcurl):
    mesh, name = start_replicated(mesh_factory, grpcurl)  # the default drain period
    load = Load(mesh.config, name).start()
    try:
        assert load.wait(lambda: served(mesh, "passengers-1") > 50, WAIT)
        stopping = member(mesh, 1)["pid"]
        assert isinstance(stopping, int)

        os.kill(stopping, signal.SIGTERM)
        assert wait_until(lambda: not process_alive(stopping), WAIT)
        assert load.wait_calls(300, WAIT)
    finally:
        load.stop()

    assert load.failures == {}, load.failures
    assert re.search(r"^passengers-1\s*\| .*event=draining", mesh.stdout(), re.M)


def test_serve_refuses_a_replica_the_clients_do_not_know(replicas_to_read):
    mesh, _ = replicas_to_read

    code, _, err = mesh.mesh("serve", "passengers", "--replica", "2")

    assert code == 2
    assert "services.passengers.replicas: is 2, so --replica must be 0 to 1, not 2" in err


def test_a_draining_replica_is_not_serving_and_gets_no_new_calls(replicated):
    mesh, name = replicated
    load = Load(mesh.config, name).start()
    try:
        assert load.wait(lambda: served(mesh, "passengers-1") > 50, WAIT)
        draining = member(mesh, 1)["pid"]
        assert isinstance(draining, int)

        os.kill(draining, signal.SIGTERM)  # NOT_SERVING, then 20 s of drain before it stops
        assert wait_until(
            lambda: re.search(r"^passengers-1\s*\| .*event=draining", mesh.stdout(), re.M), WAIT
        )
        assert load.wait_calls(300, WAIT)
        settled = served(mesh, "passengers-1")
        assert load.wait_calls(500, WAIT)

        assert served(mesh, "passengers-1") == settled, "a NOT_SERVING replica was sent new calls"
        assert process_alive(draining), "the replica stopped before the end of its drain period"
        assert member(mesh, 1)["health"] == "NOT_SERVING"
    finally:
        load.stop()

    assert load.failures == {}, load.failures
    # The drain ends early once no client watches the replica's health any more.
    assert wait_until(lambda: not process_alive(draining), WAIT)
    print(f"\ndrain: {late_calls(mesh)}")


def late_calls(mesh: Mesh) -> str:
    """How many calls replica 1 finished after it logged `draining`, and over how long (for the report)."""
    lines = [line for line in mesh.stdout().splitlines() if re.match(r"^passengers-1\s*\| \S", line)]
    stamps = [line.split("|", 1)[1].split()[0] for line in lines]
    start = next(i for i, line in enumerate(lines) if "event=draining" in line)
    late = [stamps[i] for i in range(start, len(lines)) if "rpc finished" in lines[i] and GET in lines[i]]
    if not late:
        return "no call finished after NOT_SERVING"
    return f"{len(late)} calls finished after NOT_SERVING ({stamps[start]}), the last at {late[-1]}"


def test_a_replica_failing_every_call_is_ejected(mesh_factory, grpcurl, by_hand):
    # An ejection outlasts the test, so no attempt reaches the replica again. A replica is judged
    # on 2 calls in a 250 ms sweep, not the default 5 (20 calls/s, a rate a busy machine may miss).
    ejection = {"base_ejection_time": "60s", "request_volume": 2}
    mesh, name = start_replicated(mesh_factory, grpcurl, client={"outlier_detection": ejection})
    supervised = member(mesh, 1)["pid"]
    assert isinstance(supervised, int)
    os.kill(supervised, signal.SIGTERM)  # nobody watches yet: no drain, it stops at once
    assert wait_until(lambda: not process_alive(supervised), WAIT)
    faulty = by_hand(mesh, {"MESH_SERVICES__PASSENGERS__FAULTS": "GetPassenger: abort=UNAVAILABLE"})

    load = Load(mesh.config, name).start()
    try:
        # With a 250 ms sweep and 2 calls a replica, the ejection can come within a few dozen calls.
        assert load.wait(lambda: served_alone(faulty) > 0, WAIT), faulty.describe()

        def ejected() -> bool:
            before = served_alone(faulty)
            return load.wait_calls(200, WAIT) and served_alone(faulty) == before

        assert load.wait(ejected, WAIT), "the failing replica kept getting calls"
        assert process_alive(faulty.pid)
        failed_before = load.failed
        assert load.wait_calls(500, WAIT)
    finally:
        load.stop()

    assert load.failed == failed_before, "calls failed after the failing replica was ejected"
    codes = {
        json.loads(line).get("code") for line in faulty.stderr().splitlines() if '"rpc finished"' in line
    }
    assert codes == {"UNAVAILABLE"}
    print(
        f"\nejection: {load.calls} calls, {load.failed} failed before the ejection; faulty replica saw "
        f"{served_alone(faulty)} attempts"
    )
