"""`mesh stats`: the golden metrics of every service and every edge, read from the processes' /metrics.

Like `linkerd viz stat`, without a Prometheus server: every process (each
replica, and the gateway) is scraped twice, `window` seconds apart, and the
difference gives requests per second, success rate and latency quantiles.
With no window, counts since each process started are used.

- Per service, from the SERVER side of every process serving it.
- Per edge (caller -> service), from the CLIENT side of the caller; callers
  that expose no metrics of their own (grpcurl, anything outside the mesh)
  appear from the server side's `caller` label, without latencies.
- Per outbox (trips' notifications and drivers' releases, `<service>_outbox_*`
  by `kind`): rows delivered and retries over the window, rows dead and how
  long deliveries have been failing as they stand, over every replica.

Success means "not the server's fault": a failure is a code that maps to
HTTP 5xx (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
DATA_LOSS), as Linkerd counts 5xx; NOT_FOUND or INVALID_ARGUMENT are the
caller's mistakes and count as answered. Quantiles are interpolated inside
histogram buckets exactly like Prometheus's `histogram_quantile`.
"""

from __future__ import annotations

import json
import math
import ssl
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from services.runtime.config import MeshConfig
from services.runtime.identity import https_context
from services.runtime.telemetry import (
    FAILURE_CODES,
    admin_host,
    admin_port,
    admin_scheme,
    admin_tls,
    gateway_admin_port,
)

SCRAPE_TIMEOUT = 2.0
QUANTILES = (0.5, 0.95, 0.99)
_FAILURES = frozenset(code.name for code in FAILURE_CODES)

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""(sample name, sorted labels) -> value."""


@dataclass(frozen=True)
class Target:
    """One process to scrape: which service it serves, where, and where its /metrics is."""

    service: str
    address: str
    url: str


def targets(config: MeshConfig) -> list[Target]:
    """Every process of the mesh: from the running mesh's state file (replicas included), else the config."""
    members: list[tuple[str, str]] = []
    try:
        state = json.loads((config.data_dir / "mesh.json").read_text())
        members = [(str(m["service"]), str(m["address"])) for m in state.get("members", [])]
    except (OSError, ValueError, TypeError, KeyError):
        pass
    if not members:
        members = [(s.name, s.address) for s in config.services.values()]
    found: list[Target] = []
    scheme = admin_scheme(config)
    for name, address in members:
        service = config.services.get(name)
        if service is None:
            continue
        host, _, port = address.rpartition(":")
        admin = admin_port(service, int(port) if port.isdigit() else None)
        if admin:
            reach = admin_host(config, host or service.host)
            found.append(Target(name, address, f"{scheme}://{reach}:{admin}/metrics"))
    gateway = gateway_admin_port(config)
    if gateway:
        found.append(
            Target(
                "gateway",
                config.gateway.address,
                f"{scheme}://{admin_host(config, config.gateway.host)}:{gateway}/metrics",
            )
        )
    return found


@dataclass
class Scrape:
    """What one process's /metrics said, and when (None: it did not answer)."""

    target: Target
    at: float
    series: Series | None


def parse(text: str) -> Series:
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return series


def scrape(target: Target, timeout: float = SCRAPE_TIMEOUT, tls: ssl.SSLContext | None = None) -> Scrape:
    """`tls`: the mesh tool's own certificate, for admin ports that require one (`admin_tls`)."""
    try:
        with urllib.request.urlopen(target.url, timeout=timeout, context=tls) as response:
            text = response.read().decode("utf-8")
    except (OSError, urllib.error.URLError, ValueError):
        return Scrape(target, time.time(), None)
    return Scrape(target, time.time(), parse(text))


def snapshot(config: MeshConfig, timeout: float = SCRAPE_TIMEOUT) -> list[Scrape]:
    """Every process scraped at once (a thread each, bounded by `timeout`), as the `mesh` identity
    when admin ports require a mesh certificate."""
    found = targets(config)
    if not found:
        return []
    tls = https_context(config, "mesh", server=False) if admin_tls(config) else None
    with ThreadPoolExecutor(max_workers=min(16, len(found))) as pool:
        return list(pool.map(lambda t: scrape(t, timeout, tls), found))


@dataclass
class Golden:
    """Requests, success and latency of one service or edge over the window."""

    requests: float = 0.0
    failures: float = 0.0
    rps: float = 0.0
    buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def success_rate(self) -> float | None:
        return None if self.requests <= 0 else 1.0 - self.failures / self.requests

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, self.buckets)

    def as_dict(self) -> dict[str, Any]:
        latencies = {f"p{round(q * 100)}_ms": self.quantile(q) for q in QUANTILES}
        return {
            "requests": round(self.requests),
            "rps": round(self.rps, 3),
            "success_rate": None if self.success_rate is None else round(self.success_rate, 5),
            **{k: None if v is None else round(v * 1000, 3) for k, v in latencies.items()},
        }


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's `histogram_quantile`: linear interpolation inside the bucket holding rank q.

    `buckets` maps upper bounds (`+Inf` included) to cumulative counts. A rank
    in the `+Inf` bucket gives the highest finite bound; the lowest bucket
    starts at 0.
    """
    if math.inf not in buckets or buckets[math.inf] <= 0:
        return None
    rank = q * buckets[math.inf]
    lower, below = 0.0, 0.0
    for bound in sorted(buckets):
        count = buckets[bound]
        if count >= rank:
            if bound == math.inf:
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return None


@dataclass
class OutboxStats:
    """What one service owes others through its outbox, of one kind (trips: `notice`, `release`),
    summed over its replicas: rows delivered and passes that found the recipient away, over the
    window; rows refused for good and how long deliveries have been failing, as they stand."""

    delivered: float = 0.0
    rps: float = 0.0
    retries: float = 0.0
    dead: float = 0.0
    failing_seconds: float = 0.0
    """The longest any replica has been failing; 0 while its rows go out."""

    def columns(self) -> tuple[str, ...]:
        """DELIVERED, RPS, RETRIES, DEAD and FAILING, as `mesh stats` prints them."""
        failing = f"for {self.failing_seconds:.0f}s" if self.failing_seconds else "-"
        return f"{self.delivered:.0f}", f"{self.rps:.1f}", f"{self.retries:.0f}", f"{self.dead:.0f}", failing

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": round(self.delivered),
            "rps": round(self.rps, 3),
            "retries": round(self.retries),
            "dead": round(self.dead),
            "failing_seconds": round(self.failing_seconds, 3),
        }


_OUTBOX = "_outbox_"
"""What a service's outbox metrics are named: `<service>_outbox_delivered_total` and the like, by `kind`."""
_OUTBOX_SAMPLES = frozenset({"delivered_total", "retries_total", "dead_total", "failing_seconds"})


def _add_outboxes(
    into: dict[tuple[str, str], OutboxStats], service: str, delta: Series, now: Series, elapsed: float
) -> None:
    """One process's outbox counts over the window (`delta`), its dead rows and failing time as they
    stand (`now`)."""
    for (name, labels), value in delta.items():
        what = name.partition(_OUTBOX)[2]
        if what not in _OUTBOX_SAMPLES:
            continue
        outbox = into.setdefault((service, dict(labels).get("kind", "")), OutboxStats())
        if what == "delivered_total":
            outbox.delivered += value
            outbox.rps += value / elapsed
        elif what == "retries_total":
            outbox.retries += value
        elif what == "dead_total":
            outbox.dead += now[(name, labels)]
        else:
            outbox.failing_seconds = max(outbox.failing_seconds, now[(name, labels)])


@dataclass
class Report:
    """Golden metrics per service (server side) and per edge (client side)."""

    window: float | None
    """Seconds between the two scrapes; None: since each process started."""
    services: dict[str, Golden]
    instances: dict[str, tuple[int, int]]
    """Service -> (processes that answered, processes expected)."""
    edges: dict[tuple[str, str], Golden]
    """(caller, service) -> metrics."""
    edge_sources: dict[tuple[str, str], str] = field(default_factory=dict)
    """(caller, service) -> "client" or, for callers without metrics of their own, "server"."""
    outboxes: dict[tuple[str, str], OutboxStats] = field(default_factory=dict)
    """(service, kind) -> what it owes others (services with an outbox: trips)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "window_seconds": self.window,
            "services": [
                {
                    "service": name,
                    "instances": self.instances.get(name, (0, 0))[1],
                    "instances_up": self.instances.get(name, (0, 0))[0],
                    **golden.as_dict(),
                }
                for name in sorted(set(self.instances) | set(self.services))
                for golden in [self.services.get(name, Golden())]
            ],
            "edges": [
                {
                    "caller": caller,
                    "service": service,
                    "source": self.edge_sources.get((caller, service), "client"),
                }
                | golden.as_dict()
                for (caller, service), golden in sorted(self.edges.items())
            ],
            "outboxes": [
                {"service": service, "kind": kind} | outbox.as_dict()
                for (service, kind), outbox in sorted(self.outboxes.items())
            ],
        }


def _delta(now: Series, before: Series | None) -> Series:
    if before is None:
        return now
    # A counter lower than before means the process restarted: count from its start.
    return {
        key: value - before.get(key, 0.0) if value >= before.get(key, 0.0) else value
        for key, value in now.items()
    }


def _elapsed(now: Scrape, before: Scrape | None) -> float:
    if before is not None and before.series is not None:
        return max(now.at - before.at, 1e-6)
    assert now.series is not None
    started = now.series.get(("process_start_time_seconds", ()))
    return max(now.at - started, 1e-6) if started else 1.0


def _add(
    into: dict[Any, Golden], series: Series, elapsed: float, prefix: str, key_of: Any, latency: bool = True
) -> None:
    """Adds one process's `prefix` (server or client side) counts to `into`, grouped by `key_of(labels)`."""
    for (name, labels), value in series.items():
        label = dict(labels)
        if name == f"{prefix}_calls_total":
            golden = into.setdefault(key_of(label), Golden())
            golden.requests += value
            golden.rps += value / elapsed
            if label.get("grpc_code") in _FAILURES:
                golden.failures += value
        elif latency and name == f"{prefix}_call_duration_seconds_bucket":
            golden = into.setdefault(key_of(label), Golden())
            golden.buckets[float(label["le"])] += value


def _service(label: Mapping[str, str]) -> str:
    return label.get("service", "?")


def _edge(label: Mapping[str, str]) -> tuple[str, str]:
    return label.get("caller", "unknown"), label.get("service", "?")


def report(now: Iterable[Scrape], before: Iterable[Scrape] | None = None) -> Report:
    """The golden metrics between two snapshots (or since start, without `before`)."""
    earlier = {s.target: s for s in before or ()}
    services: dict[str, Golden] = {}
    instances: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    edges: dict[tuple[str, str], Golden] = {}
    server_edges: dict[tuple[str, str], Golden] = {}
    outboxes: dict[tuple[str, str], OutboxStats] = {}
    scraped_callers: set[str] = set()
    for scrape_now in now:
        counts = instances[scrape_now.target.service]
        counts[1] += 1
        if scrape_now.series is None:
            continue
        counts[0] += 1
        scraped_callers.add(scrape_now.target.service)
        previous = earlier.get(scrape_now.target)
        usable = previous if previous is not None and previous.series is not None else None
        series = _delta(scrape_now.series, usable.series if usable else None)
        elapsed = _elapsed(scrape_now, usable)
        _add(services, series, elapsed, "mesh_server", _service)
        _add(edges, series, elapsed, "mesh_client", _edge)
        # The server's histogram has no caller label: these edges get counts, not latencies.
        _add(server_edges, series, elapsed, "mesh_server", _edge, latency=False)
        _add_outboxes(outboxes, scrape_now.target.service, series, scrape_now.series, elapsed)
    sources = {edge: "client" for edge in edges}
    for (caller, service), golden in server_edges.items():
        if caller not in scraped_callers and (caller, service) not in edges:
            edges[(caller, service)] = golden
            sources[(caller, service)] = "server"
    window = None
    if earlier:
        spans = [s.at - earlier[s.target].at for s in now if s.target in earlier]
        window = round(max(spans), 3) if spans else None
    return Report(
        window=window,
        services=services,
        instances={k: (v[0], v[1]) for k, v in instances.items()},
        edges=edges,
        edge_sources=sources,
        outboxes=outboxes,
    )


def parse_window(text: str) -> float:
    """`30s`, `500ms`, `1m`, or a number of seconds; `0` means since start."""
    text = text.strip()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * scale
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise ValueError(f"expected a duration like 30s, 500ms or 1m (0: since start), got {text!r}")


def collect(config: MeshConfig, window: float) -> Report:
    """Scrape, wait `window` seconds, scrape again; with `window` 0, one scrape (since start)."""
    if window <= 0:
        return report(snapshot(config))
    first = snapshot(config)
    time.sleep(window)
    return report(snapshot(config), first)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f}%"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f}ms" if seconds < 0.1 else f"{seconds * 1000:.0f}ms"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    )


def format_report(result: Report) -> str:
    """Services then edges, like `linkerd viz stat`, then the outboxes if any process has one."""
    heading = "since each process started" if result.window is None else f"over the last {result.window:.1f}s"
    rows: list[tuple[str, ...]] = [
        ("SERVICE", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99")
    ]
    for name in sorted(set(result.instances) | set(result.services)):
        golden = result.services.get(name, Golden())
        up, total = result.instances.get(name, (0, 0))
        rows.append(
            (
                name,
                f"{up}/{total}",
                _percent(golden.success_rate),
                f"{golden.rps:.1f}",
                *(_ms(golden.quantile(q)) for q in QUANTILES),
            )
        )
    edge_rows: list[tuple[str, ...]] = [
        ("FROM", "TO", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99")
    ]
    for (caller, service), golden in sorted(result.edges.items()):
        edge_rows.append(
            (
                caller,
                service,
                _percent(golden.success_rate),
                f"{golden.rps:.1f}",
                *(_ms(golden.quantile(q)) for q in QUANTILES),
            )
        )
    text = f"Services ({heading})\n{_table(rows)}\n\nEdges\n"
    text += _table(edge_rows) if len(edge_rows) > 1 else "(no calls observed)"
    if result.outboxes:
        outbox_rows = [("SERVICE", "KIND", "DELIVERED", "RPS", "RETRIES", "DEAD", "FAILING")] + [
            (service, kind, *outbox.columns()) for (service, kind), outbox in sorted(result.outboxes.items())
        ]
        text += f"\n\nOutboxes (what a service owes others, sent at least once)\n{_table(outbox_rows)}"
    return text
