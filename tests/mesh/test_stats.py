"""`mesh stats`: golden metrics from scraped /metrics (stats.py), and `mesh graph` (graph.py)."""

from __future__ import annotations

import json
import math
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.mesh.graph import layers, render_mesh_page, to_dot, to_svg
from services.mesh.stats import (
    Scrape,
    Target,
    format_report,
    histogram_quantile,
    parse,
    parse_window,
    report,
    targets,
)
from services.runtime.config import load_config
from services.trips.outbox import OutboxMetrics

INF = math.inf


def test_a_quantile_is_interpolated_inside_its_bucket():
    # 10 calls: 4 up to 1 ms, 4 more up to 5 ms, 2 more up to 10 ms.
    buckets = {0.001: 4, 0.005: 8, 0.01: 10, INF: 10}

    assert histogram_quantile(0.5, buckets) == pytest.approx(0.001 + 0.004 * (5 - 4) / 4)
    assert histogram_quantile(0.2, buckets) == pytest.approx(0.0005)  # the first bucket starts at 0
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.005 + 0.005 * (9.9 - 8) / 2)
    assert histogram_quantile(0.8, buckets) == pytest.approx(0.005)


def test_a_quantile_in_the_overflow_bucket_is_the_highest_finite_bound():
    assert histogram_quantile(0.99, {0.001: 1, 0.01: 2, INF: 10}) == 0.01


def test_no_observations_have_no_quantile():
    assert histogram_quantile(0.5, {0.001: 0, INF: 0}) is None
    assert histogram_quantile(0.5, {}) is None


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("500ms", 0.5), ("1m", 60), ("0", 0), ("2.5", 2.5)]
)
def test_windows_read_like_durations(text, seconds):
    assert parse_window(text) == seconds


def test_a_window_that_is_not_a_duration_is_refused():
    with pytest.raises(ValueError, match="duration"):
        parse_window("soon")


def metrics_text(
    calls: dict[tuple[str, str, str], int],
    buckets: dict[float, int],
    *,
    client: bool,
    caller: str = "trips",
    service: str = "passengers",
) -> str:
    """What a process's /metrics says: `calls` by (caller, service, code), and one histogram
    (of calls from `caller` to `service` on the client side, of `service` on the server side)."""
    side = "client" if client else "server"
    lines = ["process_start_time_seconds 1000.0", f"# TYPE mesh_{side}_calls counter"]
    for (who, whom, code), count in calls.items():
        lines.append(
            f'mesh_{side}_calls_total{{caller="{who}",service="{whom}",grpc_service="s.S",'
            f'grpc_method="M",grpc_code="{code}"}} {count}'
        )
    lines.append(f"# TYPE mesh_{side}_call_duration_seconds histogram")
    labels = (
        f'caller="{caller}",' if client else ""
    ) + f'service="{service}",grpc_service="s.S",grpc_method="M"'
    for bound, count in buckets.items():
        le = "+Inf" if bound == INF else str(bound)
        lines.append(f'mesh_{side}_call_duration_seconds_bucket{{{labels},le="{le}"}} {count}')
    lines.append(f"mesh_{side}_call_duration_seconds_count{{{labels}}} {max(buckets.values())}")
    return "\n".join(lines) + "\n"


PASSENGERS = Target("passengers", "127.0.0.1:1", "http://127.0.0.1:1001/metrics")
TRIPS = Target("trips", "127.0.0.1:2", "http://127.0.0.1:1002/metrics")


def scrape(target: Target, at: float, text: str | None) -> Scrape:
    return Scrape(target, at, None if text is None else parse(text))


def test_rates_success_and_latency_come_from_the_difference_of_two_scrapes():
    server_before = metrics_text(
        {("trips", "passengers", "OK"): 10}, {0.001: 10, 0.01: 10, INF: 10}, client=False
    )
    server_after = metrics_text(
        {
            ("trips", "passengers", "OK"): 28,
            ("trips", "passengers", "UNAVAILABLE"): 2,
            ("unknown", "passengers", "OK"): 5,
        },
        {0.001: 20, 0.01: 35, INF: 35},
        client=False,
    )
    client_before = metrics_text(
        {("trips", "passengers", "OK"): 10}, {0.001: 10, 0.01: 10, INF: 10}, client=True
    )
    client_after = metrics_text(
        {("trips", "passengers", "OK"): 28, ("trips", "passengers", "NOT_FOUND"): 2},
        {0.001: 10, 0.01: 30, INF: 30},
        client=True,
    )
    before = [scrape(PASSENGERS, 100.0, server_before), scrape(TRIPS, 100.0, client_before)]
    after = [scrape(PASSENGERS, 110.0, server_after), scrape(TRIPS, 110.0, client_after)]

    result = report(after, before)

    assert result.window == 10.0
    served = result.services["passengers"]
    assert served.requests == 25
    assert served.rps == pytest.approx(2.5)
    assert served.success_rate == pytest.approx(23 / 25)  # UNAVAILABLE is the server's failure
    assert served.quantile(0.5) == pytest.approx(0.001 + 0.009 * (12.5 - 10) / 15)
    edge = result.edges[("trips", "passengers")]
    assert edge.requests == 20
    assert edge.success_rate == 1.0  # NOT_FOUND is the caller's mistake, not a failure
    assert edge.quantile(0.99) == pytest.approx(0.001 + 0.009 * (19.8) / 20)
    # A caller without metrics of its own is seen from the server side, without latencies.
    outside = result.edges[("unknown", "passengers")]
    assert outside.requests == 5
    assert outside.quantile(0.5) is None
    assert result.edge_sources == {("trips", "passengers"): "client", ("unknown", "passengers"): "server"}
    assert result.instances == {"passengers": (1, 1), "trips": (1, 1)}


def test_without_a_window_counts_since_each_process_started():
    text = metrics_text({("trips", "passengers", "OK"): 50}, {0.001: 50, INF: 50}, client=False)

    result = report([scrape(PASSENGERS, 1100.0, text), scrape(TRIPS, 1100.0, None)])

    assert result.window is None
    assert result.services["passengers"].rps == pytest.approx(50 / 100)  # started at 1000
    assert result.instances["trips"] == (0, 1)


def test_a_restarted_process_counts_from_its_start():
    before = metrics_text({("trips", "passengers", "OK"): 100}, {INF: 100}, client=False)
    after = metrics_text({("trips", "passengers", "OK"): 7}, {INF: 7}, client=False)

    result = report([scrape(PASSENGERS, 110.0, after)], [scrape(PASSENGERS, 100.0, before)])

    assert result.services["passengers"].requests == 7


def test_the_report_as_json_and_as_a_table():
    text = metrics_text({("trips", "passengers", "OK"): 4}, {0.001: 4, INF: 4}, client=True)
    result = report([scrape(TRIPS, 1010.0, text)])

    document = json.loads(json.dumps(result.as_dict()))
    [edge] = document["edges"]
    assert edge["caller"] == "trips"
    assert edge["service"] == "passengers"
    assert edge["requests"] == 4
    assert edge["success_rate"] == 1.0
    assert edge["p50_ms"] == pytest.approx(0.5)
    table = format_report(result)
    assert "SERVICE" in table
    assert ["trips", "passengers", "100.00%", "0.4", "0.5ms", "0.9ms", "1.0ms"] in [
        line.split() for line in table.splitlines()
    ]


@pytest.fixture
def mesh_config(tmp_path: Path):
    (tmp_path / "mesh.toml").write_text(
        'data_dir = "data"\n[gateway]\nport = 18080\n'
        "[services.passengers]\nport = 16051\n[services.trips]\nport = 16053\nreplicas = 2\n"
        "[services.billing]\nport = 16054\nadmin_port = 19999\n"
    )
    return load_config(tmp_path / "mesh.toml", env={})


def test_every_process_is_scraped_at_its_admin_port(mesh_config):
    urls = {(t.service, t.url) for t in targets(mesh_config)}

    assert urls == {
        ("passengers", "http://127.0.0.1:17051/metrics"),
        ("trips", "http://127.0.0.1:17053/metrics"),
        ("billing", "http://127.0.0.1:19999/metrics"),
        ("gateway", "http://127.0.0.1:19080/metrics"),
    }


def test_replicas_of_a_running_mesh_are_scraped_too(mesh_config):
    mesh_config.data_dir.mkdir(parents=True)
    members = [
        {"service": "trips", "replica": 0, "address": "127.0.0.1:16053"},
        {"service": "trips", "replica": 1, "address": "127.0.0.1:16063"},
    ]
    (mesh_config.data_dir / "mesh.json").write_text(json.dumps({"members": members}))

    urls = [t.url for t in targets(mesh_config) if t.service == "trips"]

    assert urls == ["http://127.0.0.1:17053/metrics", "http://127.0.0.1:17063/metrics"]


def graph_report():
    trips = metrics_text(
        {
            ("trips", "passengers", "OK"): 9,
            ("trips", "passengers", "INTERNAL"): 1,
            ("trips", "billing", "OK"): 3,
        },
        {0.002: 10, INF: 10},
        client=True,
    )
    gateway = metrics_text(
        {("gateway", "trips", "OK"): 5}, {0.01: 5, INF: 5}, client=True, caller="gateway", service="trips"
    )
    return report(
        [
            scrape(TRIPS, 1010.0, trips),
            scrape(Target("gateway", "127.0.0.1:3", "http://127.0.0.1:1003/metrics"), 1010.0, gateway),
        ]
    )


def test_layers_follow_the_calls_from_the_gateway():
    depth = layers(["gateway", "passengers", "trips", "billing", "payments"], graph_report().edges)

    assert depth == {"gateway": 0, "trips": 1, "passengers": 2, "billing": 2, "payments": 1}


def test_layers_survive_a_cycle():
    depth = layers(["a", "b"], [("a", "b"), ("b", "a")])

    assert set(depth) == {"a", "b"}
    assert all(0 <= d <= 2 for d in depth.values())


def test_the_dot_graph_has_every_service_and_each_observed_edge(mesh_config):
    dot = to_dot(mesh_config, graph_report())

    assert dot.startswith("digraph mesh {")
    for name in ("gateway", "passengers", "trips", "billing"):
        assert f'"{name}"' in dot
    assert '"gateway" -> "trips" [label="0.50 rps · 100.0% · p99 9.9 ms"' in dot
    assert '"trips" -> "passengers" [label="1.00 rps · 90.0% · p99 2.0 ms"' in dot
    assert '"trips" -> "billing"' in dot


def test_the_svg_is_well_formed_with_a_node_per_service_and_a_path_per_edge(mesh_config):
    svg = to_svg(mesh_config, graph_report())

    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in root.iter(f"{ns}text")]
    for name in ("gateway", "passengers", "trips", "billing"):
        assert name in texts
    titles = sorted(
        p.find(f"{ns}title").text for p in root.iter(f"{ns}path") if p.find(f"{ns}title") is not None
    )
    assert titles == ["gateway -> trips", "trips -> billing", "trips -> passengers"]
    assert "passengers: 1.00 rps · 90.0% · p99 2.0 ms" in texts


def test_the_mesh_page_refreshes_itself_and_embeds_the_graph(mesh_config):
    page = render_mesh_page(mesh_config)  # nothing runs: every process is down

    assert '<meta http-equiv="refresh"' in page
    assert "<svg" in page
    assert "<td>passengers</td><td>0/1</td>" in page


def outbox_text(now: float, **kinds: tuple[int, int, int, float | None]) -> str:
    """What trips' /metrics says of its outbox loops, by the real collector: (delivered, retries, dead,
    failing since) by kind."""
    registry = CollectorRegistry()
    loops = [
        SimpleNamespace(
            kind=kind, delivered=d, retries=r, dead=x, failing_since=None if f is None else now - f
        )
        for kind, (d, r, x, f) in kinds.items()
    ]
    registry.register(OutboxMetrics(loops))  # type: ignore[arg-type]
    return "process_start_time_seconds 1000.0\n" + generate_latest(registry).decode()


def test_an_outbox_shows_deliveries_over_the_window_and_how_long_it_has_been_failing():
    second = Target("trips", "127.0.0.1:12", "http://127.0.0.1:1012/metrics")
    before = [
        scrape(TRIPS, 100.0, outbox_text(time.time(), notice=(100, 0, 1, None), release=(40, 2, 0, 20.0))),
        scrape(second, 100.0, outbox_text(time.time(), notice=(10, 0, 0, None), release=(5, 0, 0, None))),
    ]
    after = [
        scrape(TRIPS, 110.0, outbox_text(time.time(), notice=(160, 0, 1, None), release=(40, 9, 0, 30.0))),
        scrape(second, 110.0, outbox_text(time.time(), notice=(30, 0, 0, None), release=(5, 3, 0, 12.0))),
    ]

    result = report(after, before)

    notice, release = result.outboxes[("trips", "notice")], result.outboxes[("trips", "release")]
    assert (notice.delivered, notice.rps, notice.retries, notice.dead) == (80, pytest.approx(8.0), 0, 1)
    assert notice.failing_seconds == 0
    # Drivers away: nothing released in the window, 10 passes found it away; the longest replica's failing
    # time as it stands (a gauge: 30 s, not the 10 s it grew by in the window).
    assert (release.delivered, release.retries) == (0, 10)
    assert release.failing_seconds == pytest.approx(30.0, abs=1.0)
    table = format_report(result)
    assert re.search(r"^trips\s+notice\s+80\s+8\.0\s+0\s+1\s+-$", table, re.MULTILINE)
    assert re.search(r"^trips\s+release\s+0\s+0\.0\s+10\s+0\s+for 30s$", table, re.MULTILINE)
    assert json.loads(json.dumps(result.as_dict()))["outboxes"][1] == {
        "service": "trips",
        "kind": "release",
        "delivered": 0,
        "rps": 0.0,
        "retries": 10,
        "dead": 0,
        "failing_seconds": pytest.approx(30.0, abs=1.0),
    }


def test_a_mesh_without_an_outbox_prints_no_outbox_table():
    text = metrics_text({("trips", "passengers", "OK"): 5}, {0.001: 5, INF: 5}, client=False)

    result = report([scrape(PASSENGERS, 1010.0, text)])

    assert result.outboxes == {}
    assert "Outboxes" not in format_report(result)
