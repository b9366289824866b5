"""The trip path at city scale: rides through the whole mesh with 100 to 10,000 drivers online: `make bench`.

What it answers (issue 12): how many rides a second the mesh serves on this
machine and at what latency, where the CPU of a ride goes, and whether that
changes as the drivers around the pickup grow from 100 to 10,000, and what
each storage engine gives (issue 13): `--storage sqlite,postgres`, both by
default, a mesh per engine side by side; for the cancel flow and the whole
flow (`--flow`); and past capacity, whether the rides admitted keep a bounded
latency while the excess is refused fast (`--overload`).

What runs: the whole mesh as `make run` runs it, started by `mesh up` (the
supervisor, not a twin of it) on the repository's mesh.toml with free ports,
its own data dir and access tokens that outlive the run (environment
overrides). With `--baseline-ref REF` the mesh of another git revision runs
too (a temporary worktree, as bench/rest.py does), and each measurement is
taken on both, alternating which goes first; `--variant NAME:MESH_KEY=VALUE,...`
adds the current tree again with mesh settings changed by environment (two
trips replicas, a gateway limit; or grpc's own `GRPC_...` variables), side by side
the same way. Nothing is pinned: the mesh and this load generator share the two cores,
as with `make run`. On PostgreSQL
(127.0.0.1:5432, user `postgres`, as on every machine of the project) each
mesh gets a database per service named `bench_<random>_<service>`, made by
`mesh up` and dropped when the run ends.

Setup, over gRPC straight to the services (no gateway, so it is quick): an
API key (`mesh keys create`, 10,000 requests/s, so the key's rate limit never
refuses), `--passengers` passengers who sign in, and drivers who go online at
random places within `--area` meters of the center (Berlin), 32 calls in
flight. Drivers are added as the count grows (100, then 900 more, ...), so
one mesh serves every count. The full flow needs the assigned driver's own
token, and matching picks any driver, so each driver it can meet signs in:
the first `--full-drivers` drivers (default 100) are created with a password
and sign in at setup (argon2id twice, about 0.4 s of CPU a driver, 4 at a
time), and the full flow runs only at the driver counts up to that.

A ride, over REST through the gateway, is what the apps do. The cancel flow:
the passenger's app (its bearer token) `POST /v1/trips` (RequestTrip, pickup
within 1 km of the center, dropoff 3 km east), then `POST /v1/{trip}:cancel`.
The full flow: RequestTrip, then the assigned driver's app (the driver's
token: accept, start and complete are the trip's driver's alone)
`POST /v1/{trip}:accept`, `:start`, `:complete` (the fare invoiced and the
card charged). A step after RequestTrip refused with 429 or 503 is sent again
after the answer's Retry-After (3 attempts), as an app would, or the trip
would hold its driver; a refused RequestTrip is not, it is the excess. The
load is open-loop: ride i is due at start + i / rate whether or not earlier
ones were answered, and its latencies count from when it was due (HTTP/1.1
keep-alive connections, bench/overload.py's client). Bounded in count (rate
x seconds) and time (answers wait at most DRAIN seconds after the last ride
was due). A short run of each flow at the lowest rate warms each mesh up
(channels connect, the gateway caches the tokens), and before each run the
mesh is left to go idle (at most 60 s). After each run the trips still
holding a driver are ended over gRPC (cancelled, or completed if started).

`--overload`: instead of `--rates`, per flow, driver count and engine, the
capacity is measured first (RIDERS riders in a closed loop on the current
tree's mesh, each starting its next ride when its last one ends; a baseline
gets the same rates), then rides are offered at 1x and 2x that.

Reported per variant, flow, driver count and offered rate: rides per second
that completed over the time from the first due to the last answer; the
admitted RequestTrips' p50/p90/p99 (answered 200); the whole ride's
p50/p90/p99 without the bench's own Retry-After waits (the latency of what the
mesh admitted) and its p99 with them (what a rider whose app obeys
Retry-After waits); the refusals apart (429/503 by step: their count, how
fast they came, p50/p99, and how many said Retry-After); errors by step, HTTP
status and reason (for the gateway's OVERLOADED, which limit: in flight or
lag); each step's p50/p90/p99; each process's CPU time (/proc/<pid>/stat,
before the run and once the mesh is idle after it, so the notifications the
outbox sends after the answers count) and the gRPC calls each process made
(its /metrics, by caller, service and method), both divided by the completed
rides; and where a call's time goes: each edge's mean time at the caller and
at the called service's handler (/metrics histograms' sums), the difference
being the wait before the handler ran. A rate given more than once
(`--rates 150,150,150`) also gets one line with each run's ride p99, their
median and how many stayed under 50 ms (the issue's goal): on a shared
machine one run's tail says little. `--plot` draws the admitted rides' p99
against the offered rate, a line per flow. No assertion: the figures go to
docs/benchmarks.md with the command, machine and date.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import psycopg
from google.type.latlng_pb2 import LatLng
from psycopg import sql
from rideshare.drivers.v1 import drivers_pb2 as dpb
from rideshare.drivers.v1 import drivers_pb2_grpc
from rideshare.passengers.v1 import passengers_pb2 as ppb
from rideshare.passengers.v1 import passengers_pb2_grpc
from rideshare.trips.v1 import trips_pb2 as tpb
from rideshare.trips.v1 import trips_pb2_grpc

from bench.overload import Pool
from bench.rest import baseline_env, baseline_tree
from bench.unary import REPO
from services.mesh import stats
from tests.ports import free_ports

SERVER = "postgresql://postgres@127.0.0.1:5432"
"""The PostgreSQL server of every machine of the project (trust authentication)."""
STORAGES = ("sqlite", "postgres")

SERVICES = ("passengers", "drivers", "trips", "billing", "payments", "notifications")
CENTER = (52.52, 13.405)
METERS_PER_DEGREE = 111_195.0
PICKUP_SPREAD = 1000.0
"""Pickups fall within this many meters of the center."""
DRAIN = 15.0
"""Seconds answers may take after the last ride was due."""
START_TIMEOUT = 60.0
ADMIN_OFFSET = 1000
IN_FLIGHT = 32
"""Setup calls in flight at once."""
FLOWS = ("cancel", "full")
STEPS = {
    "cancel": ("RequestTrip", "CancelTrip"),
    "full": ("RequestTrip", "AcceptTrip", "StartTrip", "CompleteTrip"),
}
"""The calls of a ride, by flow: the passenger's app, then (full) the assigned driver's."""
FULL_DRIVERS = 100
"""The full flow's driver counts at most (default of --full-drivers): each of its drivers has a
password and signs in at setup, argon2id twice, about 0.4 s of CPU a driver."""
ATTEMPTS = 3
"""A step after RequestTrip refused (503, 429) is sent again after its Retry-After, as an app would:
a trip left unfinished holds its driver for good. A refused RequestTrip is not: it is the excess."""
RETRY_AFTER = 1.0
"""Seconds to wait after a refusal without a Retry-After."""
MAX_RETRY_AFTER = 5.0
RIDERS = 16
"""Riders of the closed loop that measures a capacity (--overload): each a call in flight at most,
below the gateway's max_in_flight (32), so none is refused."""
PASSWORD = "bench password"
_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


@dataclass
class Refusal:
    step: str
    status: int
    seconds: float
    """From when the call was due (RequestTrip) or sent to the refusal."""
    retry_after: bool
    """Whether the refusal said when to come back."""


@dataclass
class Run:
    variant: str
    flow: str
    drivers: int
    offered: float
    seconds: float
    """From the first ride due to the last answer: longer than the load when answers lag."""
    steps: dict[str, list[float]] = field(default_factory=dict)
    """Seconds from a step's start to its 200, by step, without the bench's Retry-After waits; a
    RequestTrip starts when its ride is due, a later step when the one before it was answered."""
    rides: list[float] = field(default_factory=list)
    """Seconds from due to the last step's 200, for the rides completed, without the bench's own
    Retry-After waits: the latency of the calls the mesh admitted."""
    waiting: list[float] = field(default_factory=list)
    """The same rides with those waits: what a rider whose app obeys Retry-After sees."""
    refused: list[Refusal] = field(default_factory=list)
    """Every 429 and 503, answered or retried (they are also in `errors`)."""
    errors: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds of each process over the run."""
    calls: Counter[str] = field(default_factory=Counter)
    """gRPC calls made over the run, by `caller -> service.Method` (the processes' /metrics)."""
    took: dict[str, float] = field(default_factory=dict)
    """Seconds those calls took in all, by `caller -> service.Method` as the caller saw them and by
    `service.Method` as the service's handler did: the difference is time spent before the handler
    ran (the callee's event loop backlog, the channel) or after it."""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# -- the mesh ----------------------------------------------------------------------------------------------


class Mesh:
    """`mesh up` of one source tree on free ports, and who is in it once setup is done."""

    def __init__(
        self,
        variant: str,
        tree: Path,
        workdir: Path,
        baseline: bool,
        storage: str,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        """`overrides`: mesh settings by environment (`MESH_SERVICES__TRIPS__REPLICAS=2`), for a
        `--variant` of the current tree."""
        self.variant = f"{variant}/{storage}"
        self.storage = storage
        self.database_prefix = f"bench_{os.urandom(4).hex()}" if storage == "postgres" else ""
        self.data_dir = workdir / self.variant.replace("/", "_") / "data"
        self.data_dir.mkdir(parents=True)
        ports = free_ports(len(SERVICES) + 1)
        self.ports = dict(zip(SERVICES, ports, strict=False))
        self.gateway_port = ports[-1]
        self.config = tree / "mesh.toml"
        env = {k: v for k, v in (baseline_env(tree) if baseline else os.environ).items()}
        env = {k: v for k, v in env.items() if not k.startswith("MESH_")}
        env.update(
            {f"MESH_SERVICES__{name.upper()}__PORT": str(port) for name, port in self.ports.items()},
            MESH_DATA_DIR=str(self.data_dir),
            MESH_GATEWAY__PORT=str(self.gateway_port),
            MESH_SESSIONS__ACCESS_TOKEN_LIFETIME="12h",
            PYTHONUNBUFFERED="1",
        )
        if storage == "postgres":  # `mesh up` creates the databases that do not exist yet
            env.update(
                MESH_STORAGE__BACKEND="postgres",
                MESH_STORAGE__DSN=f"{SERVER}/{self.database_prefix}_{{service}}",
            )
        env.update(overrides or {})
        self.env = env
        self.log = self.data_dir.parent / "mesh-up.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.pids: dict[str, int] = {}
        """Each process by name: the service's for its first replica, `service:k` for replica k."""
        self.admin_ports: dict[str, int] = {}
        """Where each process serves /metrics, by the same names."""
        self.key = ""
        self.tokens: list[tuple[str, str]] = []
        """(passenger name, access token) of each passenger."""
        self.driver_tokens: dict[str, str] = {}
        """Access token by driver name, of the drivers who signed in (the full flow's)."""
        self.drivers = 0

    def mesh(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "services.mesh.cli", *args, "--config", str(self.config)],
            capture_output=True, text=True, env=self.env, cwd=self.config.parent, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"bench: mesh {' '.join(args)} failed for {self.variant}:\n{done.stderr}")
        return done.stdout

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.mesh.cli", "up", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.config.parent,
            )  # fmt: skip
        state = self.data_dir / "mesh.json"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError, ValueError):
                found = json.loads(state.read_text())
                if found.get("supervisor_pid") == self.process.pid:
                    for member in found["members"]:
                        replica = member.get("replica", 0)
                        name = f"{member['service']}:{replica}" if replica else member["service"]
                        self.pids[name] = member["pid"]
                        self.admin_ports[name] = int(member["address"].rpartition(":")[2]) + ADMIN_OFFSET
                    self.pids["supervisor"] = self.process.pid
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(
                    f"bench: {self.variant}'s mesh did not start:\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        self.key = self.mesh(
            "keys", "create", "bench", "--scopes", "rides", "--rate", "10000", "--burst", "100000"
        ).strip()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # Ctrl-C: the supervisor stops its children
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def drop_databases(self) -> None:
        """Drop this mesh's PostgreSQL databases (after `stop`; WITH FORCE ends what is left)."""
        if not self.database_prefix:
            return
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5) as conn:
            for service in SERVICES:
                name = sql.Identifier(f"{self.database_prefix}_{service}")
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))

    def cpu(self) -> dict[str, float]:
        """CPU seconds of each process so far; on PostgreSQL also of each server process serving
        this mesh's databases (`postgres:<pid>`: a connection's backend, for as long as it lives)."""
        used = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        if self.database_prefix:
            with psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5) as conn:
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname LIKE %s",
                    (self.database_prefix.replace("_", r"\_") + r"\_%",),
                ).fetchall()
            for (pid,) in rows:
                with contextlib.suppress(OSError):
                    used[f"postgres:{pid}"] = cpu_seconds(pid)
        return used

    def calls(self) -> tuple[Counter[str], dict[str, float]]:
        """Every gRPC call the mesh's processes made so far, by edge and method, from their /metrics
        (the admin port is the port + mesh.toml's default offset of 1000); and the seconds those calls
        took, summed, as each caller saw them (the same keys) and as the called service's handlers
        did (`service.Method`)."""
        made: Counter[str] = Counter()
        took: dict[str, float] = defaultdict(float)
        for name, port in self.admin_ports.items():
            scraped = stats.scrape(stats.Target(name, "", f"http://127.0.0.1:{port}/metrics"))
            for (metric, labels), value in (scraped.series or {}).items():
                label = dict(labels)
                if metric == "mesh_client_calls_total":
                    made[f"{label['caller']} -> {label['service']}.{label['grpc_method']}"] += int(value)
                elif metric == "mesh_client_call_duration_seconds_sum":
                    took[f"{label['caller']} -> {label['service']}.{label['grpc_method']}"] += value
                elif metric == "mesh_server_call_duration_seconds_sum":
                    took[f"{label['service']}.{label['grpc_method']}"] += value
        return made, took


@contextlib.contextmanager
def meshes(
    workdir: Path,
    baseline_ref: str | None,
    storages: Sequence[str],
    variants: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[list[Mesh]]:
    """A mesh per source tree (and per `variants` entry: the current tree with those settings) and
    storage engine, all running side by side; stopped (and their databases dropped) at the end."""
    started: list[Mesh] = []
    with contextlib.ExitStack() as stack:
        trees: list[tuple[str, Path, bool, Mapping[str, str]]] = [("current", REPO, False, {})]
        trees += [(name, REPO, False, settings) for name, settings in (variants or {}).items()]
        if baseline_ref:
            trees.append((baseline_ref, stack.enter_context(baseline_tree(baseline_ref)), True, {}))
        try:
            for variant, tree, baseline, settings in trees:
                for storage in storages:
                    mesh = Mesh(variant, tree, workdir, baseline, storage, settings)
                    started.append(mesh)
                    mesh.start()
            yield started
        finally:
            for mesh in started:
                mesh.stop()
            for mesh in started:
                mesh.drop_databases()


# -- setup over gRPC ---------------------------------------------------------------------------------------


def around(rng: random.Random, center: tuple[float, float], meters: float) -> LatLng:
    """A uniformly random place within `meters` of `center`."""
    distance, bearing = meters * math.sqrt(rng.random()), rng.random() * 2 * math.pi
    latitude = center[0] + distance * math.cos(bearing) / METERS_PER_DEGREE
    longitude = center[1] + distance * math.sin(bearing) / (
        METERS_PER_DEGREE * math.cos(math.radians(center[0]))
    )
    return LatLng(latitude=latitude, longitude=longitude)


async def _bounded(calls: Sequence[Callable[[], Awaitable[T]]], limit: int = IN_FLIGHT) -> list[T]:
    """Every call's result, at most `limit` in flight."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(call) for call in calls))


async def _sign_up(mesh: Mesh, count: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.ports['passengers']}") as channel:
        stub = passengers_pb2_grpc.PassengerServiceStub(channel)

        async def one(number: int) -> tuple[str, str]:
            email = f"rider{number}@bench.example"
            draft = ppb.Passenger(display_name=f"Rider {number}", email=email, password=PASSWORD)
            created = await stub.CreatePassenger(ppb.CreatePassengerRequest(passenger=draft))
            session = await stub.SignIn(ppb.SignInRequest(email=email, password=PASSWORD))
            return created.name, session.access_token

        mesh.tokens = await _bounded([functools.partial(one, n) for n in range(count)], 4)


async def _add_drivers(mesh: Mesh, target: int, area: float, seed: int, signed_in: int) -> None:
    """Drivers online until there are `target`; the first `signed_in` of all of them are created
    with an email and a password and sign in (the full flow's drivers act with their own token)."""
    rng = random.Random(seed * 1_000_003 + mesh.drivers)
    places = [around(rng, CENTER, area) for _ in range(target - mesh.drivers)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.ports['drivers']}") as channel:
        stub = drivers_pb2_grpc.DriverServiceStub(channel)

        async def one(number: int, place: LatLng) -> None:
            vehicle = dpb.Vehicle(make="Toyota", model="Prius", license_plate=f"B-{number}")
            draft = dpb.Driver(display_name=f"Driver {number}", vehicle=vehicle)
            email = f"driver{number}@bench.example"
            if number < signed_in:
                draft.email, draft.password = email, PASSWORD
            created = await stub.CreateDriver(dpb.CreateDriverRequest(driver=draft))
            await stub.GoOnline(dpb.GoOnlineRequest(name=created.name, location=place))
            if number < signed_in:
                session = await stub.SignIn(dpb.SignInRequest(email=email, password=PASSWORD))
                mesh.driver_tokens[created.name] = session.access_token

        # argon2id (creating a password, signing in) is CPU-bound: as many in flight as for passengers
        limit = 4 if mesh.drivers < signed_in else IN_FLIGHT
        await _bounded([functools.partial(one, n, p) for n, p in enumerate(places, mesh.drivers)], limit)
    mesh.drivers = target


# -- the rides ---------------------------------------------------------------------------------------------


def _http(path: str, body: Mapping[str, object], key: str, token: str) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\nx-api-key: {key}\r\n"
        f"authorization: Bearer {token}\r\ncontent-length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def _kind(step: str, status: int, body: bytes) -> str:
    """`RequestTrip 400 NO_DRIVER_AVAILABLE`: the step, the HTTP status, the ErrorInfo reason (or the
    gRPC code when there is none)."""
    if status == 0:
        return f"{step} no answer"
    try:
        error = json.loads(body)
        reasons = [d["reason"] for d in error.get("details", []) if "reason" in d]
        said = reasons[0] if reasons else _CODES.get(error.get("code"), "")
        if said == "OVERLOADED":  # which of the gateway's limits refused: its message says
            said += " (lag)" if "behind" in error.get("message", "") else " (in flight)"
    except (ValueError, TypeError, AttributeError, KeyError):
        said = "not JSON"
    return f"{step} {status} {said}".rstrip()


_CODES = {code.value[0]: code.name for code in grpc.StatusCode}
_RETRY_AFTER = re.compile(rb"\r\nretry-after:\s*(\d+)", re.IGNORECASE)


def _retry_after(head: bytes) -> float | None:
    """The answer's Retry-After in seconds (delay-seconds, what the gateway sends), None without one."""
    found = _RETRY_AFTER.search(head)
    return float(found.group(1)) if found else None


class Rides:
    """Rides of one flow through one mesh's gateway, each recorded in `run` as it ends."""

    def __init__(self, mesh: Mesh, run: Run, seed: int) -> None:
        self.mesh = mesh
        self.run = run
        self.rng = random.Random(seed)
        self.pool = Pool(mesh.gateway_port)
        self.loop = asyncio.get_running_loop()
        self.answered = 0.0
        """When the last answer came."""

    async def ride(self, number: int, due: float) -> None:
        try:
            await self._ride(number, due)
        except Exception as error:  # a bug here must show in the report, not vanish with the task
            self.run.errors[f"bench error {type(error).__name__}"] += 1

    async def _ride(self, number: int, due: float) -> None:
        mesh, run = self.mesh, self.run
        passenger, token = mesh.tokens[number % len(mesh.tokens)]
        pickup = around(self.rng, CENTER, PICKUP_SPREAD)
        body = {
            "passenger": passenger,
            "pickup": {"latitude": pickup.latitude, "longitude": pickup.longitude},
            "dropoff": {"latitude": pickup.latitude, "longitude": pickup.longitude + 0.044},
            "paymentMethod": "pm_card_visa",
        }
        waits = 0.0
        """Seconds this ride slept on Retry-After: the app's wait, not the mesh's."""
        trip: dict[str, str] = {}
        for step in STEPS[run.flow]:
            if step == "RequestTrip":  # counted from when the ride was due: no coordinated omission
                request, began, attempts = _http("/v1/trips", body, mesh.key, token), due, 1
            else:
                path = f"/v1/{trip['name']}:{step.removesuffix('Trip').lower()}"
                request = _http(path, {"reason": "bench"} if step == "CancelTrip" else {}, mesh.key, token)
                began, attempts = self.loop.time(), ATTEMPTS
            waited = 0.0
            for attempt in range(attempts):
                sent = began if attempt == 0 else self.loop.time()
                status, head, answer = await self.pool.exchange(request)
                self.answered = self.loop.time()
                if status == 200:
                    break
                run.errors[_kind(step, status, answer)] += 1
                if status not in (429, 503):
                    return
                after = _retry_after(head)
                run.refused.append(Refusal(step, status, self.answered - sent, after is not None))
                if attempt == attempts - 1:
                    return
                asleep = self.loop.time()
                await asyncio.sleep(min(RETRY_AFTER if after is None else after, MAX_RETRY_AFTER))
                waited += self.loop.time() - asleep  # what the refusal's Retry-After says, as slept
            run.steps.setdefault(step, []).append(self.answered - began - waited)
            waits += waited
            if step == "RequestTrip":
                trip = json.loads(answer)
                if run.flow == "full":  # the assigned driver takes it from here, with its own token
                    token = mesh.driver_tokens.get(trip["driver"], "")
                    if not token:
                        run.errors["RequestTrip assigned a driver who did not sign in"] += 1
                        return
        run.rides.append(self.answered - due - waits)
        run.waiting.append(self.answered - due)

    async def open_loop(self) -> None:
        """Ride i due at start + i / rate, whether or not earlier ones were answered."""
        run, pending = self.run, set[asyncio.Task[None]]()
        count = max(1, int(run.offered * run.seconds))
        start = self.loop.time() + 0.1
        for number in range(count):
            due = start + number / run.offered
            delay = due - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(self.ride(number, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await self._drain(pending)
        run.seconds = max(self.answered - start, run.seconds)

    async def closed_loop(self, riders: int) -> None:
        """`riders` riders, each starting its next ride when its last one ends, for run.seconds."""
        run, numbers = self.run, itertools.count()
        start = self.loop.time()
        end = start + run.seconds

        async def rider() -> None:
            while self.loop.time() < end:
                await self.ride(next(numbers), self.loop.time())

        await self._drain({asyncio.ensure_future(rider()) for _ in range(riders)})
        run.seconds = max(self.answered - start, run.seconds)

    async def _drain(self, pending: set[asyncio.Task[None]]) -> None:
        """Wait at most DRAIN seconds past the load for the rides still under way; count the rest."""
        if pending:
            await asyncio.wait(pending, timeout=DRAIN)
        if pending := {task for task in pending if not task.done()}:
            self.run.errors["unanswered"] += len(pending)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
        self.pool.close()


def measure(
    mesh: Mesh, flow: str, drivers: int, rate: float, seconds: float, seed: int, riders: int = 0
) -> Run:
    """One run: open-loop at `rate`, or closed-loop with `riders` (the rate is then what they got)."""
    import uvloop

    async def rides(run: Run) -> None:
        load = Rides(mesh, run, seed)
        await (load.closed_loop(riders) if riders else load.open_loop())

    run = Run(mesh.variant, flow, drivers, rate, seconds)
    before, load_before, (calls_before, took_before) = mesh.cpu(), cpu_seconds(os.getpid()), mesh.calls()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(rides(run))
    settle([mesh])  # the outbox sends the rides' notifications after their answers: count those too
    after = mesh.cpu()
    for name, seconds_used in after.items():  # a server process that ended meanwhile is left out
        process = name.split(":")[0]
        run.cpu[process] = run.cpu.get(process, 0.0) + seconds_used - before.get(name, 0.0)
    calls, took = mesh.calls()
    run.calls = calls - calls_before
    run.took = {name: seconds_took - took_before.get(name, 0.0) for name, seconds_took in took.items()}
    run.cpu["load"] = cpu_seconds(os.getpid()) - load_before
    if riders:
        run.offered = len(run.rides) / run.seconds
    held = asyncio.run(_free_drivers(mesh))
    if held:
        run.errors["drivers left ON_TRIP (freed after the run)"] = held
    return run


async def _free_drivers(mesh: Mesh) -> int:
    """End the trips still holding a driver (a RequestTrip answered too late for the client, a step
    refused every time), over gRPC: each run starts with every driver AVAILABLE. A trip in progress
    is completed (it cannot be cancelled), any other cancelled."""
    held = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.ports['drivers']}") as channel:
        stub = drivers_pb2_grpc.DriverServiceStub(channel)
        token = ""
        while True:
            page = await stub.ListDrivers(dpb.ListDriversRequest(page_size=1000, page_token=token))
            held += [d.current_trip for d in page.drivers if d.status == dpb.DRIVER_STATUS_ON_TRIP]
            token = page.next_page_token
            if not token:
                break
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.ports['trips']}") as channel:
        trips = trips_pb2_grpc.TripServiceStub(channel)

        async def end(name: str) -> None:
            trip = await trips.GetTrip(tpb.GetTripRequest(name=name))
            if trip.state == tpb.TRIP_STATE_IN_PROGRESS:
                await trips.CompleteTrip(tpb.CompleteTripRequest(name=name))
            else:
                await trips.CancelTrip(tpb.CancelTripRequest(name=name, reason="bench cleanup"))

        await _bounded([functools.partial(end, name) for name in held])
    return len(held)


def capacities(up: list[Mesh], flow: str, drivers: int, seconds: float, seed: int) -> dict[str, float]:
    """Rides per second of `flow` by storage engine, measured with RIDERS riders in a closed loop on
    the first mesh of each engine (the current tree's: a baseline is offered the same rates)."""
    found: dict[str, float] = {}
    for mesh in up:
        if mesh.storage not in found:
            settle(up)
            got = round(measure(mesh, flow, drivers, 0.0, seconds, seed, RIDERS).offered)
            found[mesh.storage] = got
            print(f"{mesh.variant} {flow} flow, {drivers:,} drivers: capacity {got:g} rides/s", flush=True)
    return found


def settle(up: list[Mesh], limit: float = 60.0) -> float:
    """Wait (at most `limit` s) until every mesh is idle: past capacity one works through a backlog
    after its load stops, on the cores the next run needs. The seconds waited (`limit`: not idle)."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        before = sum(sum(mesh.cpu().values()) for mesh in up)
        time.sleep(0.5)
        if sum(sum(mesh.cpu().values()) for mesh in up) - before < 0.05 * len(up):
            return time.monotonic() - began
    return limit


# -- the report ----------------------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _ms(values: list[float], shares: Sequence[float] = (0.5, 0.9, 0.99)) -> str:
    if not values:
        return "-"
    return " / ".join(f"{percentile(values, q) * 1000:,.0f}" for q in shares)


def _refused(refused: list[Refusal]) -> str:
    """`RequestTrip 503: 40, CancelTrip 503: 2; 3 / 9 ms; Retry-After 42/42`."""
    if not refused:
        return "-"
    counts = Counter(f"{r.step} {r.status}" for r in refused)
    told = sum(r.retry_after for r in refused)
    return (
        f"{', '.join(f'{k}: {v}' for k, v in counts.most_common())}; "
        f"{_ms([r.seconds for r in refused], (0.5, 0.99))} ms; Retry-After {told}/{len(refused)}"
    )


def report(runs: list[Run]) -> str:
    processes = [*SERVICES, "gateway", "supervisor", "postgres", "load"]
    steps = list(dict.fromkeys(s for flow in FLOWS for s in STEPS[flow]))
    edges = sorted({edge for r in runs for edge in r.calls})

    def done(r: Run) -> int:
        return max(1, len(r.rides))

    def summary(r: Run) -> list[str]:
        errors = ", ".join(f"{k}: {v}" for k, v in r.errors.most_common()) or "-"
        return [
            f"{len(r.rides) / r.seconds:,.1f}",
            _ms(r.steps.get("RequestTrip", [])),
            _ms(r.rides),
            _ms(r.waiting, (0.99,)),
            _refused(r.refused),
            errors,
        ]

    def cpu(r: Run) -> list[str]:
        used = [r.cpu.get(p, 0.0) for p in processes] + [sum(v for k, v in r.cpu.items() if k != "load")]
        return [f"{seconds / done(r) * 1000:.1f}" for seconds in used]

    def calls(r: Run) -> list[str]:
        made = [r.calls[edge] for edge in edges] + [sum(r.calls.values())]
        return [f"{count / done(r):.2f}" for count in made]

    summary_columns = [
        "completed/s", "RequestTrip 200 p50 / p90 / p99 ms", "ride p50 / p90 / p99 ms",
        "ride p99 with Retry-After waits ms",
    ]  # fmt: skip
    refusals = ["refused (429, 503): count; p50 / p99 ms; with Retry-After", "errors"]
    return "\n\n".join(
        [
            _table(runs, "", summary_columns, summary, text=refusals, offered="offered rides/s"),
            _table(
                runs,
                "Each step's p50 / p90 / p99 ms (answered 200; RequestTrip from when its ride was due, "
                "a later step from the answer before it; without the bench's Retry-After waits):",
                steps,
                lambda r: [_ms(r.steps.get(step, [])) for step in steps],
            ),
            _table(
                runs,
                "CPU ms per completed ride, by process (postgres: the server's processes for the mesh's "
                "connections, not its WAL writer or checkpointer):",
                [*processes, "all but load"],
                cpu,
            ),
            _table(
                runs, "gRPC calls per completed ride, by caller -> service.method:", [*edges, "all"], calls
            ),
            _table(
                runs,
                "Where a call's time goes: mean ms per call as its caller saw it / as the called service's "
                "handler did (the difference: waiting for the callee's event loop, or in the channel; a "
                "handler's time includes the calls it makes):",
                edges,
                lambda r: [_mean_ms(r, edge) for edge in edges],
            ),
            *_repeats(runs),
        ]
    )


def _repeats(runs: list[Run]) -> list[str]:
    """For a rate given more than once (`--rates 150,150,150`): each run's ride p99 side by side, their
    median, and how many stayed under 50 ms; on a shared machine one run's tail says little."""
    alike: dict[tuple[str, str, int, float], list[Run]] = {}
    for r in runs:
        alike.setdefault((r.variant, r.flow, r.drivers, r.offered), []).append(r)
    lines = [
        f"- {variant}, {flow} flow, {drivers:,} drivers, {offered:g}/s: ride p99 "
        f"{', '.join(f'{p:,.0f}' for p in p99s)} ms; median {statistics.median(p99s):,.0f}; "
        f"under 50 ms in {sum(p < 50 for p in p99s)} of {len(p99s)}"
        for (variant, flow, drivers, offered), same in alike.items()
        if len(same) > 1
        for p99s in [[percentile(r.rides, 0.99) * 1000 if r.rides else float("inf") for r in same]]
    ]
    return ["Runs of the same rate, side by side:\n\n" + "\n".join(lines)] if lines else []


def _table(
    runs: list[Run],
    title: str,
    columns: list[str],
    cells: Callable[[Run], list[str]],
    text: Sequence[str] = (),
    offered: str = "offered",
) -> str:
    """A Markdown table with a row per run: variant, flow, drivers, offered, then `columns` (numbers,
    right-aligned) and `text` (left-aligned), the cells `cells` gives; `title` above it."""
    head = ["variant", "flow", "drivers", offered, *columns, *text]
    align = ["---", "---", "---:", "---:", *("---:" for _ in columns), *("---" for _ in text)]
    lines = [title, ""] if title else []
    lines += [f"| {' | '.join(head)} |", f"| {' | '.join(align)} |"]
    lines += [
        f"| {' | '.join([r.variant, r.flow, f'{r.drivers:,}', f'{r.offered:g}', *cells(r)])} |" for r in runs
    ]
    return "\n".join(lines)


def _mean_ms(run: Run, edge: str) -> str:
    """`12.0 / 3.1`: mean ms of the edge's calls at the caller / at the callee's handler (every
    caller's calls of that method)."""
    method = edge.split(" -> ")[1]
    served = sum(count for name, count in run.calls.items() if name.endswith(f" -> {method}"))
    if not run.calls[edge] or not served:
        return "-"
    caller, handler = run.took.get(edge, 0.0) / run.calls[edge], run.took.get(method, 0.0) / served
    return f"{caller * 1000:.1f} / {handler * 1000:.1f}"


def plot(runs: list[Run], path: Path) -> None:
    """p99 of the admitted rides (without the bench's Retry-After waits) against the offered rate,
    a line per variant, flow and driver count (a PNG)."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        print(f"bench: no plot: matplotlib is missing (pip install -e '.[bench]'); not writing {path}")
        return
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    lines = sorted({(r.variant, r.flow, r.drivers) for r in runs})
    variants = sorted({r.variant for r in runs})
    styles = {variant: ("-", "--", ":", "-.")[n % 4] for n, variant in enumerate(variants)}
    colours = {line: f"C{n}" for n, line in enumerate(sorted({(r.flow, r.drivers) for r in runs}))}
    markers = {"cancel": "o", "full": "s"}
    for variant, flow, drivers in lines:
        mine = sorted(
            (r for r in runs if (r.variant, r.flow, r.drivers) == (variant, flow, drivers)),
            key=lambda r: r.offered,
        )
        p99 = [percentile(r.rides, 0.99) * 1000 if r.rides else math.nan for r in mine]
        axes.plot(
            [r.offered for r in mine], p99, styles[variant], color=colours[(flow, drivers)],
            marker=markers[flow], label=f"{variant}, {flow} flow, {drivers:,} drivers",
        )  # fmt: skip
    axes.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_formatter(plain)
    axes.set_xlabel("offered rides per second (cancel: request, cancel; full: request to complete)")
    axes.set_ylabel("p99 of an admitted ride, ms (log)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Rides through the whole mesh: RequestTrip then CancelTrip (cancel flow), or "
        "RequestTrip, AcceptTrip, StartTrip, CompleteTrip (full flow), over REST through the gateway."
    )
    parser.add_argument(
        "--quick", action="store_true", help="100 and 1,000 drivers, 20 and 40 rides/s, 3 s, cancel flow"
    )
    parser.add_argument("--flow", help="cancel, full or both (default cancel,full; quick cancel)")
    parser.add_argument("--drivers", help="driver counts, ascending (default 100,1000,10000; quick 100,1000)")
    parser.add_argument(
        "--full-drivers", type=int, default=FULL_DRIVERS, metavar="N",
        help=f"the full flow runs at the driver counts up to N (default {FULL_DRIVERS}): the first N "
        "drivers have a password and sign in at setup (argon2id: about 0.4 s of CPU each)",
    )  # fmt: skip
    parser.add_argument("--rates", help="offered rides per second (default 20,40,80,150; quick 20,40)")
    parser.add_argument(
        "--overload", action="store_true",
        help=f"instead of --rates: per flow, driver count and storage, measure the capacity ({RIDERS} "
        "riders in a closed loop on the current mesh) and offer 1x and 2x that",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, help="seconds of load per run (default 10, quick 3)")
    parser.add_argument("--passengers", type=int, default=20, help="passengers taking turns (default 20)")
    parser.add_argument(
        "--area", type=float, default=5000.0, help="drivers within this many meters of the center"
    )
    parser.add_argument("--seed", type=int, default=12, help="where drivers and pickups fall")
    parser.add_argument(
        "--baseline-ref", metavar="REF", help="also run the mesh of this git revision, side by side"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="also run the current tree with these mesh settings (MESH_ or GRPC_ environment overrides), "
        "side by side, e.g. 2-trips:MESH_SERVICES__TRIPS__REPLICAS=2",
    )
    parser.add_argument(
        "--storage", default=",".join(STORAGES), help="storage engines, a mesh each (default sqlite,postgres)"
    )
    parser.add_argument("--plot", type=Path, metavar="PNG", help="draw p99 against the offered rate here")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep each mesh's `mesh up` output here")
    args = parser.parse_args(argv)
    counts = [int(x) for x in (args.drivers or ("100,1000" if args.quick else "100,1000,10000")).split(",")]
    rates = [float(x) for x in (args.rates or ("20,40" if args.quick else "20,40,80,150")).split(",")]
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    flows = (args.flow or ("cancel" if args.quick else ",".join(FLOWS))).split(",")
    if counts != sorted(counts) or not all(0 < c <= 100_000 for c in counts):
        parser.error("--drivers: ascending counts from 1 to 100,000")
    storages = args.storage.split(",")
    variants: dict[str, dict[str, str]] = {}
    for given in args.variant:
        name, _, settings = given.partition(":")
        pairs = [pair.partition("=") for pair in settings.split(",") if pair]
        malformed = any(not key.startswith(("MESH_", "GRPC_")) or not sep for key, sep, _ in pairs)
        if not name or "/" in name or not pairs or malformed:
            parser.error(f"--variant {given!r}: NAME:MESH_KEY=VALUE,... (or GRPC_KEY=VALUE)")
        variants[name] = {key: value for key, _, value in pairs}
    if not storages or not set(storages) <= set(STORAGES) or len(set(storages)) != len(storages):
        parser.error(f"--storage: some of {','.join(STORAGES)}")
    if not flows or not set(flows) <= set(FLOWS) or len(set(flows)) != len(flows):
        parser.error(f"--flow: some of {','.join(FLOWS)}")
    if "full" in flows and not any(c <= args.full_drivers for c in counts):
        parser.error("--full-drivers: below every driver count, the full flow would not run")
    if args.overload and args.rates:
        parser.error("--overload measures the rates: no --rates with it")
    if not all(0 < r <= 1000 for r in rates) or not 0 < seconds <= 120 or args.passengers < 1:
        parser.error("--rates from 0 to 1000, --seconds up to 120, --passengers at least 1")
    signed_in = min(counts[-1], args.full_drivers) if "full" in flows else 0
    print(
        f"rides ({' and '.join(flows)} flow) at {'1x and 2x capacity' if args.overload else rates} per s "
        f"for {seconds:g} s each, with {counts} drivers within {args.area:g} m "
        f"(the full flow up to {args.full_drivers:,}), on {' and '.join(storages)}; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    started = time.monotonic()
    runs: list[Run] = []
    with (
        tempfile.TemporaryDirectory(prefix="rideshare-bench-trips-") as folder,
        meshes(Path(folder), args.baseline_ref, storages, variants) as up,
    ):
        for mesh in up:
            asyncio.run(_sign_up(mesh, args.passengers))
            asyncio.run(_add_drivers(mesh, counts[0], args.area, args.seed, signed_in))
            for flow in flows:  # warm-up: channels, token cache, SQLite pages
                measure(mesh, flow, counts[0], min(rates), 2.0, -1)
        for number, count in enumerate(counts):
            for mesh in up:
                began = time.monotonic()
                asyncio.run(_add_drivers(mesh, count, args.area, args.seed, signed_in))
                print(
                    f"{mesh.variant}: {count:,} drivers online ({time.monotonic() - began:.0f} s)", flush=True
                )
            for flow in flows:
                if flow == "full" and count > args.full_drivers:
                    continue
                offered = capacities(up, flow, count, seconds, args.seed) if args.overload else None
                for step in range(2 if offered else len(rates)):
                    order = up if (number + step) % 2 == 0 else list(reversed(up))
                    for mesh in order:
                        rate = offered[mesh.storage] * (step + 1) if offered else rates[step]
                        waited = settle(up)
                        run = measure(mesh, flow, count, rate, seconds, args.seed + step)
                        runs.append(run)
                        print(
                            f"{mesh.variant} {flow} flow, {count:,} drivers, {rate:g}/s: "
                            f"{len(run.rides) / run.seconds:.1f} rides/s, "
                            f"ride p50/p90/p99 {_ms(run.rides)} ms, "
                            f"{len(run.refused)} refused, {sum(run.errors.values())} errors"
                            f" (idle after {waited:.0f} s, load average {os.getloadavg()[0]:.1f})",
                            flush=True,
                        )
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for mesh in up:
                mesh.stop()
                shutil.copy(mesh.log, args.logs / f"{mesh.variant.replace('/', '_')}-mesh-up.log")
    print()
    print(report(runs))
    if args.plot:
        plot(runs, args.plot)
    print(f"\n{time.monotonic() - started:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
