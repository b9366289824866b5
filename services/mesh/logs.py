"""What `mesh up` prints: its children's log lines, each behind its member's name, and its own.

Children write one JSON object per line (services/runtime/log.py); read by
eye, that is noise, so each line is shown as `service | time LEVEL message
key=value` (`--raw-logs` keeps the JSON, for piping into `jq`). Lines that
are not such JSON (a traceback from a dying interpreter) pass through as they
are. Names are coloured when the output is a terminal and NO_COLOR is unset.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable
from typing import IO, Any

_COLORS = ("36", "33", "35", "32", "34", "31", "96", "93")
LINE_LIMIT = 1 << 20
"""The longest line read from a child in one piece; a longer one is cut (asyncio streams need a bound)."""


class LogPrinter:
    """Prints children's lines under their names, and the supervisor's own `mesh: ...` lines."""

    def __init__(self, names: Iterable[str], out: IO[str], raw: bool = False) -> None:
        names = list(names)
        self.width = max((len(n) for n in names), default=4)
        self.colors = {n: _COLORS[i % len(_COLORS)] for i, n in enumerate(names)}
        self.out = out
        self.raw = raw
        self.color = out.isatty() and not os.environ.get("NO_COLOR")

    def prefix(self, name: str) -> str:
        label = name.ljust(self.width)
        return f"\x1b[{self.colors.get(name, '0')}m{label}\x1b[0m | " if self.color else f"{label} | "

    def render(self, line: str) -> str:
        """A JSON log line as `time LEVEL message  key=value ...`; anything else unchanged."""
        if self.raw:
            return line
        try:
            entry = json.loads(line)
        except ValueError:
            return line
        if not isinstance(entry, dict) or "msg" not in entry:
            return line
        ts = str(entry.pop("ts", ""))[11:23]
        level = str(entry.pop("level", "")).upper()
        msg = entry.pop("msg")
        exception = entry.pop("exception", None)
        for key in ("service", "logger"):
            entry.pop(key, None)
        extras = " ".join(f"{k}={_plain(v)}" for k, v in entry.items())
        text = f"{ts} {level:<7} {msg}" + (f"  {extras}" if extras else "")
        if exception:
            text += "\n" + str(exception)
        return text

    def write(self, name: str, line: str) -> None:
        prefix = self.prefix(name)
        for part in self.render(line.rstrip("\n")).split("\n"):
            self.out.write(prefix + part + "\n")
        self.out.flush()

    def say(self, message: str) -> None:
        """A line of the supervisor's own."""
        self.out.write(f"mesh: {message}\n")
        self.out.flush()

    async def pump(self, name: str, stream: asyncio.StreamReader) -> None:
        """Print `stream` (a child's output) line by line until it ends."""
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than LINE_LIMIT: asyncio has dropped it
                self.write(name, f"(a line longer than {LINE_LIMIT} bytes was left out)")
                continue
            if not line:
                return
            self.write(name, line.decode(errors="replace"))


def _plain(value: Any) -> str:
    """A log field as an operator reads it: lists comma-joined, not Python reprs."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
