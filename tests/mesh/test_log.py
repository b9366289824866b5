"""Structured logs: one JSON object per line, the shape `mesh up` and operators read."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from services.runtime import log


@pytest.fixture
def service_name():
    before = log._service_name
    log._service_name = "passengers"
    yield "passengers"
    log._service_name = before


def record(msg: str = "hello %s", args: tuple = ("world",), **extra) -> logging.LogRecord:
    made = logging.getLogger("rideshare.test").makeRecord(
        "rideshare.test", logging.WARNING, __file__, 1, msg, args, None
    )
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_a_line_has_the_standard_fields(service_name):
    line = log.JsonFormatter().format(record())

    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["service"] == "passengers"
    assert entry["logger"] == "rideshare.test"
    assert entry["msg"] == "hello world"
    assert entry["ts"].endswith("Z")
    assert len(entry["ts"]) == len("2024-01-01T00:00:00.000Z")


def test_call_fields_and_extra_fields_are_merged(service_name):
    token = log.call_fields.set({"method": "/p.S/M", "request_id": "r-1"})
    try:
        line = log.JsonFormatter().format(record(fields={"code": "NOT_FOUND", "duration_ms": 1.5}))
    finally:
        log.call_fields.reset(token)

    entry = json.loads(line)
    assert entry["method"] == "/p.S/M"
    assert entry["request_id"] == "r-1"
    assert entry["code"] == "NOT_FOUND"
    assert entry["duration_ms"] == 1.5


def test_outside_a_call_there_are_no_call_fields(service_name):
    assert "method" not in json.loads(log.JsonFormatter().format(record()))


def test_multiline_messages_and_tracebacks_stay_on_one_line(service_name):
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        made = logging.getLogger("rideshare.test").makeRecord(
            "rideshare.test", logging.ERROR, __file__, 1, "two\nlines", (), sys.exc_info()
        )

    line = log.JsonFormatter().format(made)

    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "two\nlines"
    assert "Traceback" in entry["exception"]
    assert "ValueError: bad" in entry["exception"]


def test_values_json_cannot_encode_are_written_as_text(service_name):
    entry = json.loads(log.JsonFormatter().format(record(fields={"path": Path("/var/x")})))

    assert entry["path"] == "/var/x"


def test_configure_sends_json_to_stderr_at_the_level(capsys):
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, log._service_name)
    try:
        log.configure("drivers", "warning")
        log.get_logger("x").info("hidden")
        log.get_logger("x").warning("shown")
    finally:
        root.handlers[:], level, log._service_name = saved
        root.setLevel(level)

    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["msg"] for line in lines] == ["shown"]
    assert json.loads(lines[0])["service"] == "drivers"
    assert json.loads(lines[0])["logger"] == "rideshare.x"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_one_warning_then_one_per_interval_and_a_line_when_it_ends(caplog):
    clock = Clock()
    outage = log.Outage(logging.getLogger("rideshare.test"), "the database", interval=10.0, clock=clock)
    caplog.set_level(logging.INFO, "rideshare.test")

    for _ in range(5):  # a loop failing every second or faster
        outage.failed("refused")
    clock.now += 10.0
    outage.failed("refused")
    outage.failed("refused")
    outage.ended()
    outage.ended()  # nothing to say: it was over already

    lines = [(r.levelname, r.getMessage(), r.fields["failures"], r.exc_info) for r in caplog.records]
    assert lines == [
        ("WARNING", "the database unavailable: refused", 1, None),
        ("WARNING", "the database still unavailable: refused", 5, None),
        ("INFO", "the database available again after 7 failures", 7, None),
    ]


def test_a_new_outage_warns_at_once_however_soon_after_the_last(caplog):
    outage = log.Outage(logging.getLogger("rideshare.test"), "the database", interval=10.0, clock=Clock())
    caplog.set_level(logging.INFO, "rideshare.test")

    outage.failed("down")
    outage.ended()
    outage.failed("down again")

    assert [r.getMessage() for r in caplog.records][-1] == "the database unavailable: down again"
