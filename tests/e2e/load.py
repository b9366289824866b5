"""Steady load from a real mesh client, for the replica and failover tests.

`Load` starts `python -m tests.e2e.load`: a process running a
`services.runtime.client.Clients` (the channels, service config, retries and health
checking every service uses to call another) with a few workers calling
`GetPassenger` back to back. It writes what the callers saw to a small JSON file
as it goes, which `Load` reads. Tests wait on the number of calls made
(`wait_calls`), never on wall-clock time, so a slow machine makes them slower,
not flaky.

A separate process, not a thread of the test process: grpc's C core keeps one
state per process, and a test process that runs a grpc client while it forks
mesh processes, or after other tests used grpc.aio on other event loops, is not
the process a service runs in.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_WRITE_EVERY = 0.01
"""Seconds between two writes of the stats file by the load process."""


class Load:
    """`GetPassenger(name)` from `workers` concurrent callers until `stop()`."""

    def __init__(self, config_path: Path, name: str, workers: int = 4) -> None:
        self.config_path = config_path
        self.name = name
        self.workers = workers
        self.stats = config_path.parent / f"load-{os.getpid()}-{id(self)}.json"
        self.log = self.stats.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None
        self.ok = 0
        self.failures: dict[tuple[str, str], int] = {}

    @property
    def calls(self) -> int:
        self._read()
        return self.ok + sum(self.failures.values())

    @property
    def failed(self) -> int:
        self._read()
        return sum(self.failures.values())

    def start(self) -> Load:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
        argv = [str(self.config_path), self.name, str(self.workers), str(self.stats)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.e2e.load", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        assert self.wait(lambda: self.stats.exists(), 30), (
            f"the load client did not start:\n{self.describe()}"
        )
        return self

    def stop(self) -> Load:
        """Stop the callers and close the channels (their health watches end with them)."""
        process = self.process
        assert process is not None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._read()
        assert process.returncode == 0, f"the load client failed:\n{self.describe()}"
        return self

    def describe(self) -> str:
        return f"--- load client\n{self.log.read_text(errors='replace') if self.log.exists() else ''}"

    def wait_calls(self, count: int, timeout: float = 60.0) -> bool:
        """Wait until `count` more calls finished (True), or `timeout` seconds passed (False)."""
        target = self.calls + count
        return self.wait(lambda: self.calls >= target, timeout, interval=0.01)

    def wait(self, condition: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1) -> bool:
        """Poll `condition` (True), until `timeout` passes or the load client died (False)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline or (self.process is not None and self.process.poll() is not None):
                return False
            time.sleep(interval)
        return True

    def _read(self) -> None:
        try:
            stats = json.loads(self.stats.read_text())
        except (OSError, ValueError):
            return
        self.ok = stats["ok"]
        self.failures = {(code, details): n for code, details, n in stats["failures"]}


# -- the load process ---------------------------------------------------------------------------------


async def _run(config_path: str, name: str, workers: int, stats_path: str) -> None:
    import grpc
    from rideshare.passengers.v1 import passengers_pb2 as pb
    from rideshare.passengers.v1 import passengers_pb2_grpc

    from services.runtime.client import Clients
    from services.runtime.config import load_config

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    ok = 0
    failures: collections.Counter[tuple[str, str]] = collections.Counter()
    stats = Path(stats_path)

    def write() -> None:
        tmp = stats.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ok": ok, "failures": [[*key, n] for key, n in failures.items()]}))
        tmp.replace(stats)

    async def worker(stub: passengers_pb2_grpc.PassengerServiceStub) -> None:
        nonlocal ok
        request = pb.GetPassengerRequest(name=name)
        while not stop.is_set():
            try:
                await stub.GetPassenger(request)
                ok += 1
            except grpc.aio.AioRpcError as exc:
                failures[(exc.code().name, exc.details() or "")] += 1

    async def reporter() -> None:
        while not stop.is_set():
            write()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _WRITE_EVERY)

    clients = Clients(load_config(config_path, env={}), caller="load")
    stub = clients.stub(passengers_pb2_grpc.PassengerServiceStub)
    try:
        await asyncio.gather(reporter(), *(worker(stub) for _ in range(workers)))
    finally:
        await clients.close()
        write()


if __name__ == "__main__":
    config, passenger, count, path = sys.argv[1:5]
    asyncio.run(_run(config, passenger, int(count), path))
