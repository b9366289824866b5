"""The call metrics of one process: plain counters on the call path, Prometheus families at scrape time.

Every call a process serves or makes updates one `Series` (a method on one
side of one edge): in flight, a latency bucket, a count by caller and code.
These are plain Python numbers, not prometheus-client's metric children: a
child guards each update with a lock and runs its checks in Python, and the
five updates of a call cost ~2 us in a loop (~8 us in place) against ~0.3 us
here, which is a few per cent of a call's CPU (docs/benchmarks.md, section 3).
Prometheus-client still owns the registry, the exposition format and the
process metrics: `Metrics` is registered as a collector and turns the series
into metric families when /metrics is read, the interface the library
documents for exactly this ("custom collectors").

Updates come from one thread, the process's event loop (grpc.aio servers,
interceptors and the gateway all run there), so no lock is needed on the call
path. A scrape runs on the admin server's thread: it copies each container
with one C-level call (atomic under the GIL) before reading it, so a scrape
never sees a dict change size under it; a series may be one call ahead in one
number and behind in another, as with the library's own separately locked
children.

The families (the same names and labels as prometheus-client's own classes
would expose):

- `mesh_server_calls_total{service, caller, grpc_service, grpc_method, grpc_code}`
- `mesh_server_call_duration_seconds{service, grpc_service, grpc_method}` (histogram, unary calls)
- `mesh_server_calls_in_flight{service, grpc_service, grpc_method}`
- `mesh_client_calls_total{caller, service, grpc_service, grpc_method, grpc_code}`
- `mesh_client_call_duration_seconds{caller, service, grpc_service, grpc_method}`
- `mesh_client_calls_in_flight{caller, service, grpc_service, grpc_method}`
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

#: Seconds; fine below 10 ms, where calls between local services land.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The `le` labels, written as prometheus-client writes its own histograms' bounds.
_BOUNDS = (*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf")  # type: ignore[no-untyped-call]


class Series:
    """One method on one side of one edge: calls in flight, unary latencies, calls by outcome."""

    __slots__ = ("buckets", "calls", "in_flight", "labels", "seconds")

    def __init__(self, labels: tuple[str, ...], timed: bool) -> None:
        self.labels = labels
        self.in_flight = 0
        self.buckets: list[int] | None = [0] * len(_BOUNDS) if timed else None
        """Non-cumulative counts per LATENCY_BUCKETS bound, the last one past them (+Inf)."""
        self.seconds = 0.0
        self.calls: dict[tuple[str, ...], int] = {}
        """Finished calls by the labels the series does not fix ((caller, code) or (code,))."""

    def finish(self, outcome: tuple[str, ...], seconds: float | None) -> None:
        """A call ended with `outcome` after `seconds` (None: not timed, a stream)."""
        self.in_flight -= 1
        calls = self.calls
        calls[outcome] = calls.get(outcome, 0) + 1
        buckets = self.buckets
        if seconds is not None and buckets is not None:
            buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.seconds += seconds


@dataclass(frozen=True)
class _Side:
    """How one side's series become families."""

    prefix: str
    labels: tuple[str, ...]
    """What a series fixes."""
    outcome: tuple[str, ...]
    """What its counts are split by."""
    interleave: bool
    """The calls family puts the first outcome label second (the server side's `caller` after `service`)."""
    helps: tuple[str, str, str]
    """Help of the calls, latency and in-flight families."""

    def call_labels(self) -> tuple[str, ...]:
        return self.call_values(self.labels, self.outcome)

    def call_values(self, labels: tuple[str, ...], outcome: tuple[str, ...]) -> tuple[str, ...]:
        if self.interleave:
            return (labels[0], outcome[0], *labels[1:], *outcome[1:])
        return (*labels, *outcome)


_CALL = ("grpc_service", "grpc_method")
SERVER = _Side(
    "mesh_server",
    ("service", *_CALL),
    ("caller", "grpc_code"),
    interleave=True,
    helps=(
        "Calls this process served, by caller and status code.",
        "Time from receiving a unary call to answering it.",
        "Calls being served now.",
    ),
)
CLIENT = _Side(
    "mesh_client",
    ("caller", "service", *_CALL),
    ("grpc_code",),
    interleave=False,
    helps=(
        "Calls this process made to other services, by status code.",
        "Time from sending a unary call to its answer, retries included.",
        "Calls waiting for an answer now.",
    ),
)


class Metrics:
    """The call metrics of one process, and the collector of its registry (with the process one)."""

    def __init__(self) -> None:
        self._series: dict[_Side, dict[tuple[str, ...], Series]] = {SERVER: {}, CLIENT: {}}
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # process_start_time_seconds: rates "since start"
        self.registry.register(self)

    def server(self, service: str, grpc_service: str, grpc_method: str, timed: bool) -> Series:
        """The series of a served method (one per labels: asking twice gives the same one)."""
        return self._get(SERVER, (service, grpc_service, grpc_method), timed)

    def client(self, caller: str, service: str, grpc_service: str, grpc_method: str, timed: bool) -> Series:
        """The series of a method called on `service`."""
        return self._get(CLIENT, (caller, service, grpc_service, grpc_method), timed)

    def _get(self, side: _Side, labels: tuple[str, ...], timed: bool) -> Series:
        found = self._series[side].get(labels)
        if found is None:
            found = self._series[side][labels] = Series(labels, timed)
        return found

    def collect(self) -> Iterator[Metric]:
        """The call families, as the registry asks for them at each scrape."""
        for side, by_labels in self._series.items():
            yield from _families(side, list(by_labels.values()))


def _families(side: _Side, series: list[Series]) -> Iterator[Metric]:
    calls_help, latency_help, in_flight_help = side.helps
    calls = CounterMetricFamily(f"{side.prefix}_calls", calls_help, labels=side.call_labels())
    latency = HistogramMetricFamily(f"{side.prefix}_call_duration_seconds", latency_help, labels=side.labels)
    in_flight = GaugeMetricFamily(f"{side.prefix}_calls_in_flight", in_flight_help, labels=side.labels)
    for one in series:
        for outcome, count in list(one.calls.items()):
            calls.add_metric(side.call_values(one.labels, outcome), count)
        in_flight.add_metric(one.labels, one.in_flight)
        if one.buckets is not None:
            seconds, counts = one.seconds, list(one.buckets)
            cumulative, total = [], 0
            for bound, count in zip(_BOUNDS, counts, strict=True):
                total += count
                cumulative.append((bound, total))
            latency.add_metric(one.labels, cumulative, seconds)
    yield calls
    yield latency
    yield in_flight
