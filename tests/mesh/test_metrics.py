"""The call metrics read at scrape time say what prometheus-client's own classes would have said."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.runtime.metrics import LATENCY_BUCKETS, Metrics

SERVICE = "rideshare.passengers.v1.PassengerService"


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text, by name and sorted labels (what a scraper reads)."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# Bounds, values just either side of them, zero and past the last one: `le` is inclusive.
LATENCIES = [0.0, 0.0005, 0.00050001, 0.001, 0.0007, 0.003, 0.01, 0.0999, 2.5, 9.99, 10.0, 10.01, 400.0]


def test_latency_buckets_match_prometheus_client_histogram():
    ours = Metrics()
    series = ours.server("passengers", SERVICE, "GetPassenger", timed=True)
    registry = CollectorRegistry()
    theirs = Histogram(
        "mesh_server_call_duration_seconds",
        "reference",
        ("service", "grpc_service", "grpc_method"),
        buckets=LATENCY_BUCKETS,
        registry=registry,
    ).labels("passengers", SERVICE, "GetPassenger")
    for seconds in LATENCIES:
        series.in_flight += 1
        series.finish(("trips", "OK"), seconds)
        theirs.observe(seconds)

    expected = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
        if not s.name.endswith("_created")
    }
    got = {key: value for key, value in samples(ours).items() if key[0] in {k[0] for k in expected}}
    assert got == pytest.approx(expected)
    assert len([k for k in got if k[0].endswith("_bucket")]) == len(LATENCY_BUCKETS) + 1


def test_served_calls_are_counted_by_caller_and_code():
    metrics = Metrics()
    series = metrics.server("passengers", SERVICE, "GetPassenger", timed=True)
    for caller, code in [("trips", "OK"), ("trips", "OK"), ("gateway", "NOT_FOUND")]:
        series.in_flight += 1
        series.finish((caller, code), 0.001)
    series.in_flight += 1  # one still being served

    found = samples(metrics)
    labels = (("grpc_method", "GetPassenger"), ("grpc_service", SERVICE), ("service", "passengers"))
    assert found[("mesh_server_calls_in_flight", labels)] == 1
    assert found[("mesh_server_call_duration_seconds_count", labels)] == 3
    ok = tuple(sorted((*labels, ("caller", "trips"), ("grpc_code", "OK"))))
    not_found = tuple(sorted((*labels, ("caller", "gateway"), ("grpc_code", "NOT_FOUND"))))
    assert found[("mesh_server_calls_total", ok)] == 2
    assert found[("mesh_server_calls_total", not_found)] == 1


def test_a_client_series_is_an_edge_and_an_untimed_one_has_no_histogram():
    metrics = Metrics()
    unary = metrics.client("gateway", "passengers", SERVICE, "GetPassenger", timed=True)
    stream = metrics.client("gateway", "notifications", "n.v1.N", "Stream", timed=False)
    assert metrics.client("gateway", "passengers", SERVICE, "GetPassenger", timed=True) is unary
    for series in (unary, stream):
        series.in_flight += 1
        series.finish(("UNAVAILABLE",), 0.02)

    found = samples(metrics)
    edge = (("caller", "gateway"), ("grpc_method", "GetPassenger"), ("grpc_service", SERVICE))
    edge = tuple(sorted((*edge, ("service", "passengers"))))
    assert found[("mesh_client_calls_total", tuple(sorted((*edge, ("grpc_code", "UNAVAILABLE")))))] == 1
    assert found[("mesh_client_call_duration_seconds_sum", edge)] == pytest.approx(0.02)
    assert not any(name.endswith("_bucket") and ("service", "notifications") in key for name, key in found)
    assert found[("mesh_client_calls_in_flight", edge)] == 0


def test_a_scrape_while_calls_add_series_never_fails():
    """The admin thread reads while the event loop adds series and outcomes."""
    metrics = Metrics()
    stop = threading.Event()
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not stop.is_set():
                generate_latest(metrics.registry)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        for number in range(3000):
            series = metrics.server("passengers", SERVICE, f"Method{number % 300}", timed=True)
            series.in_flight += 1
            series.finish((f"caller{number % 7}", "OK"), 0.001)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert samples(metrics)[
        (
            "mesh_server_calls_total",
            tuple(
                sorted(
                    {
                        "service": "passengers",
                        "caller": "caller0",
                        "grpc_service": SERVICE,
                        "grpc_method": "Method0",
                        "grpc_code": "OK",
                    }.items()
                )
            ),
        )
    ] == pytest.approx(2)  # numbers 0 and 2100 (the only ones that are 0 mod 300 and mod 7)
