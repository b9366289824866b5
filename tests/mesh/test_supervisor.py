"""`mesh up` and `mesh status`: the backoff, what is said when a member exits, the logs, what status reads."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
from datetime import datetime

import pytest

from services.mesh.lifecycle import Backoff, Child, Supervisor, describe_exit
from services.mesh.logs import LINE_LIMIT, LogPrinter
from services.mesh.status import Member, format_table, state_file, status
from services.runtime.config import load_config
from services.runtime.errors import ConfigError

from ..conftest import write_mesh_file

MESH = 'host = "127.0.0.1"\ndata_dir = "data"\n[services.passengers]\nport = 1\n'


def load(tmp_path, text: str = MESH, env: dict[str, str] | None = None):
    return load_config(write_mesh_file(tmp_path, text), env=env or {})


# -- the backoff ---------------------------------------------------------------------------------------


def test_a_crash_loop_waits_twice_as_long_each_time_up_to_the_cap():
    backoff = Backoff(initial=0.5, maximum=30.0, reset_after=60.0)

    assert [backoff.next(uptime=1.0) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_a_member_that_stayed_up_long_enough_starts_over_from_the_first_wait():
    backoff = Backoff(initial=0.5, maximum=30.0, reset_after=60.0)
    for _ in range(5):
        backoff.next(uptime=59.0)

    assert backoff.next(uptime=60.0) == 0.5
    assert backoff.next(uptime=3.0) == 1.0


def test_a_port_still_taken_counts_as_another_failure():
    backoff = Backoff(initial=1.0, maximum=8.0, reset_after=60.0)
    backoff.next(uptime=2.0)

    assert [backoff.next(uptime=0.0) for _ in range(4)] == [2.0, 4.0, 8.0, 8.0]


def test_the_wait_stays_at_the_cap_however_long_the_loop():
    backoff = Backoff(initial=0.5, maximum=30.0, reset_after=60.0)
    backoff.failures = 10_000

    assert backoff.next(uptime=0.0) == 30.0


def test_the_backoff_comes_from_the_mesh_file(tmp_path):
    config = load(tmp_path, MESH + '[supervisor]\ninitial_backoff = "100ms"\nmax_backoff = "1s"\n')
    backoff = Backoff.of(config.supervisor)

    assert [backoff.next(uptime=0.0) for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


# -- [supervisor] in the mesh file ------------------------------------------------------------------


def test_the_supervisor_restarts_failures_by_default(tmp_path):
    config = load(tmp_path).supervisor

    assert (config.restart, config.initial_backoff, config.max_backoff, config.reset_after) == (
        "on-failure",
        0.5,
        30.0,
        60.0,
    )


def test_the_supervisor_settings_can_come_from_the_environment(tmp_path):
    config = load(
        tmp_path, env={"MESH_SUPERVISOR__RESTART": "no", "MESH_SUPERVISOR__RESET_AFTER": "5m"}
    ).supervisor

    assert (config.restart, config.reset_after) == ("no", 300.0)


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ('restart = "always"', "supervisor.restart", "expected one of on-failure, no, got 'always'"),
        ("restart = false", "supervisor.restart", "expected a non-empty string"),
        ('initial_backoff = "0s"', "supervisor.initial_backoff", "expected a positive duration"),
        ('max_backoff = "soon"', "supervisor.max_backoff", "expected a positive duration"),
        (
            'initial_backoff = "2s"\nmax_backoff = "1s"',
            "supervisor.max_backoff",
            "initial_backoff (2s) is longer than max_backoff (1s)",
        ),
        ('initial_backoff = "1m"', "supervisor.initial_backoff", "is longer than max_backoff (30s)"),
        ("reset_after = -1", "supervisor.reset_after", "expected a positive duration"),
        ("restarts = 3", "supervisor.restarts", "unknown key (did you mean 'restart'?)"),
    ],
)
def test_a_bad_supervisor_setting_names_its_key(tmp_path, table, key, problem):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, MESH + f"[supervisor]\n{table}\n")

    assert caught.value.key == key
    assert problem in caught.value.problem


# -- what the supervisor says and does when a child exits ----------------------------------------------


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (-9, "killed by SIGKILL"),
        (-11, "killed by SIGSEGV"),
        (1, "exit code 1"),
        (2, "exit code 2 (bad configuration)"),
        (3, "exit code 3 (port in use)"),
        (0, "exit code 0"),
    ],
)
def test_an_exit_is_described_as_an_operator_reads_it(code, said):
    assert describe_exit(code) == said


def supervisor(tmp_path, settings: str = "") -> tuple[Supervisor, io.StringIO]:
    config = load(tmp_path, MESH + settings)
    out = io.StringIO()
    return Supervisor(config, list(config.services.values()), out), out


def passengers(sup: Supervisor) -> Child:
    return sup.children["passengers"]


def test_a_crashed_child_is_named_with_its_pid_and_signal_and_its_restart_scheduled(tmp_path):
    sup, out = supervisor(tmp_path)
    child = passengers(sup)

    delay = sup.exited(child, pid=4321, code=-9)

    said = out.getvalue()
    assert said.startswith("mesh: passengers (pid 4321) was killed by SIGKILL at ")
    assert said.rstrip().endswith("; restarting it in 0.5s (restart 1)")
    assert delay == 0.5
    assert child.process is None
    assert child.last_exit == "killed by SIGKILL"
    assert child.last_exit_at is not None
    assert datetime.fromisoformat(child.last_exit_at).utcoffset() is not None  # local time, with its offset
    assert child.left_down is None


def test_a_child_that_stopped_cleanly_stays_down(tmp_path):
    sup, out = supervisor(tmp_path)
    child = passengers(sup)

    delay = sup.exited(child, pid=4321, code=0)

    assert "exited with code 0" in out.getvalue()
    assert "not restarting it (it stopped cleanly)" in out.getvalue()
    assert delay is None
    assert child.left_down == 0


def test_with_restart_no_a_crashed_child_stays_down_and_is_reported_at_the_end(tmp_path):
    sup, out = supervisor(tmp_path, '[supervisor]\nrestart = "no"\n')
    child = passengers(sup)

    delay = sup.exited(child, pid=4321, code=1)

    assert "passengers (pid 4321) exited with code 1 at " in out.getvalue()
    assert 'not restarting it ([supervisor] restart = "no")' in out.getvalue()
    assert delay is None
    assert asyncio.run(sup.stop_all()) == {"passengers": 1}


def test_a_port_someone_else_holds_is_reported_and_retried_later(tmp_path):
    sup, out = supervisor(tmp_path)
    child = passengers(sup)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        child.port = squatter.getsockname()[1]
        child.backoff.next(uptime=1.0)

        delay = sup.blocked(child)

    assert delay == 1.0
    assert out.getvalue() == (
        f"mesh: passengers: port {child.port} on 127.0.0.1 is taken by another process; trying again in 1s\n"
    )
    assert child.process is None
    assert child.restarts == 0


def test_the_gateway_stops_first_then_the_services_last_started_first(tmp_path, monkeypatch):
    config = load(tmp_path, MESH + "[services.drivers]\nport = 2\n[services.trips]\nport = 3\n[gateway]\n")
    sup = Supervisor(config, list(config.services.values()), io.StringIO(), gateway=True)
    events: list[str] = []

    async def stop(child: Child) -> int:
        events.append(f"signal {child.name}")
        await asyncio.sleep(0)
        events.append(f"stopped {child.name}")
        return 0

    monkeypatch.setattr(sup, "stop", stop)

    assert asyncio.run(sup.stop_all()) == {}
    assert events[:2] == ["signal gateway", "stopped gateway"]
    assert [e for e in events if e.startswith("signal")] == [
        "signal gateway",
        "signal trips",
        "signal drivers",
        "signal passengers",
    ]


# -- how the children's logs are printed ----------------------------------------------------------------

LINE = json.dumps(
    {
        "ts": "2025-06-01T01:12:09.123Z",
        "level": "info",
        "service": "passengers",
        "logger": "rideshare.server",
        "msg": "serving passengers on 127.0.0.1:50051",
        "port": 50051,
        "services": ["a.A", "b.B"],
    }
)


def printed(line: str, raw: bool = False) -> list[str]:
    out = io.StringIO()
    LogPrinter(["passengers", "drivers-1"], out, raw).write("passengers", line + "\n")
    return out.getvalue().splitlines()


def test_a_json_log_line_is_shown_as_time_level_message_and_fields_behind_the_member_name():
    assert printed(LINE) == [
        "passengers | 01:12:09.123 INFO    serving passengers on 127.0.0.1:50051  port=50051 services=a.A,b.B"
    ]


def test_an_exception_follows_its_log_line_each_of_its_lines_behind_the_name():
    line = json.dumps({"ts": "", "level": "error", "msg": "boom", "exception": "Traceback\n  ValueError"})

    assert printed(line) == [
        "passengers |  ERROR   boom",
        "passengers | Traceback",
        "passengers |   ValueError",
    ]


def test_raw_logs_and_lines_that_are_not_json_log_entries_pass_through_unchanged():
    assert printed(LINE, raw=True) == [f"passengers | {LINE}"]
    assert printed("Traceback (most recent call last):") == [
        "passengers | Traceback (most recent call last):"
    ]
    assert printed("[1, 2]") == ["passengers | [1, 2]"]


def test_a_line_too_long_to_read_is_left_out_and_the_lines_after_it_still_print():
    async def pump() -> str:
        stream = asyncio.StreamReader(limit=LINE_LIMIT)
        stream.feed_data(b"x" * (LINE_LIMIT + 1) + b"\nafter\n")
        stream.feed_eof()
        out = io.StringIO()
        await LogPrinter(["passengers"], out).pump("passengers", stream)
        return out.getvalue()

    assert asyncio.run(pump()) == (
        f"passengers | (a line longer than {LINE_LIMIT} bytes was left out)\npassengers | after\n"
    )


# -- what `mesh status` shows ------------------------------------------------------------------------


def test_status_shows_the_restarts_and_last_exit_the_running_supervisor_recorded(tmp_path):
    config = load(tmp_path)
    path = state_file(config)
    path.parent.mkdir(parents=True)
    stamp = "2025-06-01T03:12:09+02:00"
    path.write_text(
        json.dumps(
            {
                "supervisor_pid": os.getpid(),  # alive: this test
                "members": [
                    {
                        "service": "passengers",
                        "replica": 0,
                        "address": "127.0.0.1:1",
                        "pid": None,
                        "restarts": 4,
                        "last_exit": "exit code 1",
                        "last_exit_at": stamp,
                    }
                ],
            }
        )
    )

    [member] = status(config)

    assert (member.pid, member.health, member.restarts, member.last_exit) == (None, "DOWN", 4, "exit code 1")
    assert member.last_exit_at is not None
    assert member.last_exit_at == stamp
    table = format_table([member]).splitlines()
    assert table[0].split() == ["SERVICE", "ADDRESS", "PID", "HEALTH", "RESTARTS", "LAST", "EXIT"]
    assert table[1].split() == [
        "passengers", "127.0.0.1:1", "-", "DOWN", "4", "exit", "code", "1", "at",
        "03:12:09",
    ]  # fmt: skip


def test_status_of_a_state_file_without_restarts_counts_none(tmp_path):
    """A state file written before restarts existed (or by hand) still reads."""
    config = load(tmp_path)
    path = state_file(config)
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "supervisor_pid": os.getpid(),
                "members": [{"service": "passengers", "address": "127.0.0.1:1", "pid": os.getpid()}],
            }
        )
    )

    [member] = status(config)

    assert (member.pid, member.restarts, member.last_exit, member.last_exit_at) == (
        os.getpid(),
        0,
        None,
        None,
    )


def test_the_table_shows_a_crash_looping_member():
    members = [
        Member("passengers", "127.0.0.1:50051", 10, "SERVING"),
        Member(
            "drivers", "127.0.0.1:50052", None, "DOWN", 0, 7, "killed by SIGKILL", "2025-06-01T03:12:09+02:00"
        ),
    ]

    assert format_table(members).splitlines() == [
        "SERVICE     ADDRESS          PID  HEALTH   RESTARTS  LAST EXIT",
        "passengers  127.0.0.1:50051  10   SERVING  0         -",
        "drivers     127.0.0.1:50052  -    DOWN     7         killed by SIGKILL at 03:12:09",
    ]
