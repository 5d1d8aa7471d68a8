"""The dashboard's figures, from a real analytics SQLite file filled through the real store.

Expected values are computed here from the raw events the test wrote (exact counts per
bucket; the true percentile of each bucket's latencies), independently of the SQL the
module under test runs.
"""

from __future__ import annotations

import bisect
import math
import random
import sqlite3

import pytest

from mole.frontend.analytics import Analytics
from mole.frontend.fleet import (
    LATENCY_BOUNDS_MS,
    Window,
    estimate_percentile,
    fleet_view,
    routing_breakdown,
    time_series,
)

NOW = 1_800_000_000.0
ROUTES = [
    ("english", "rating", "llama-2-7b-hf"),
    ("japanese", "esci", "qwen2.5-7b"),
    ("german", "pii", "mistral-7b"),
]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _bucket_bounds(value: float) -> tuple[float, float]:
    index = bisect.bisect_left(LATENCY_BOUNDS_MS, value)
    lower = 0.0 if index == 0 else LATENCY_BOUNDS_MS[index - 1]
    upper = LATENCY_BOUNDS_MS[min(index, len(LATENCY_BOUNDS_MS) - 1)]
    return lower, upper


def _true_percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@pytest.fixture
def events(tmp_path):
    """1,200 events over the last 10 minutes (and 50 older ones the window must ignore)."""
    rng = random.Random(7)
    clock = Clock()
    store = Analytics(tmp_path / "analytics.sqlite3", clock=clock, flush_interval_s=1e9)
    written = []
    for i in range(1250):
        age = 600 + rng.uniform(1, 300) if i < 50 else rng.uniform(0, 599.9)
        language, task, model = ROUTES[i % 3]
        ok = rng.random() > 0.1
        latency = rng.lognormvariate(3.0, 0.8)
        clock.now = NOW - age
        store.record(ok=ok, latency_ms=latency, language=language, task=task, model=model,
                     error=None if ok else "worker_lost")  # fmt: skip
        written.append((NOW - age, language, task, model, ok, latency))
    store.flush()
    store.close()
    db = sqlite3.connect(tmp_path / "analytics.sqlite3")
    yield db, written
    db.close()


def test_counts_per_bucket_match_the_events_written(events):
    db, written = events
    window = Window(now=NOW, span_s=600, bucket_s=10)
    series = time_series(db, window)
    assert series["points"] == 60
    expected = [0] * 60
    expected_errors = [0] * 60
    for ts, *_, ok, _latency in written:
        index = int((ts - window.start) // 10)
        if 0 <= index < 60:
            expected[index] += 1
            expected_errors[index] += 0 if ok else 1
    assert series["overall"]["requests"] == expected
    assert series["overall"]["errors"] == expected_errors
    assert sum(expected) == 1200
    by_service = series["service"]
    assert set(by_service) == {model for *_, model in ROUTES}
    assert sum(sum(s["requests"]) for s in by_service.values()) == 1200
    assert set(series["expert"]) == {f"{task} · {language}" for language, task, _ in ROUTES}


def test_percentiles_fall_in_the_bucket_of_the_true_percentile(events):
    db, written = events
    window = Window(now=NOW, span_s=600, bucket_s=60)  # 10 buckets of ~110 successes
    series = time_series(db, window)
    for index in range(window.points):
        values = [
            lat for ts, *_, ok, lat in written
            if ok and window.start + index * 60 <= ts < window.start + (index + 1) * 60
        ]  # fmt: skip
        for q, key in ((0.5, "p50"), (0.99, "p99")):
            lower, upper = _bucket_bounds(_true_percentile(values, q))
            got = series["overall"][key][index]
            assert lower <= got <= upper, (index, key, got, lower, upper)


def test_estimate_percentile_interpolates_within_a_bucket():
    counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    counts[3] = 10  # ten values in (5, 10] ms
    assert estimate_percentile(counts, 0.5) == pytest.approx(7.5)
    assert estimate_percentile(counts, 1.0) == pytest.approx(10.0)
    assert estimate_percentile([0] * len(counts), 0.5) is None
    counts = [0] * len(counts)
    counts[-1] = 1  # beyond the last bound: reported as the last bound
    assert estimate_percentile(counts, 0.99) == LATENCY_BOUNDS_MS[-1]


def test_routing_breakdown_counts_routes_in_the_window(events):
    db, written = events
    window = Window(now=NOW)
    routes = routing_breakdown(db, window)
    expected: dict[tuple[str, str, str], list[int]] = {}
    for ts, language, task, model, ok, _ in written:
        if ts >= window.start:
            counts = expected.setdefault((language, task, model), [0, 0])
            counts[0] += 1
            counts[1] += 0 if ok else 1
    got = {(r["language"], r["task"], r["model"]): [r["requests"], r["errors"]] for r in routes}
    assert got == expected
    assert [r["requests"] for r in routes] == sorted((r["requests"] for r in routes), reverse=True)


def test_fleet_view_groups_workers_under_services_with_their_state():
    status = {
        "broker": {"id": "b1"},
        "services": {"svc-b": {"workers": 1, "queue_depth": 3}, "svc-a": {"workers": 2}},
        "workers": [
            {"id": "w2", "service": "svc-a", "suspect": True},
            {"id": "w1", "service": "svc-a"},
            {"id": "w3", "service": "svc-b", "draining": True},
        ],
        "counters": {"requests": 5},
    }
    view = fleet_view(status)
    assert [s["name"] for s in view["services"]] == ["svc-a", "svc-b"]
    svc_a, svc_b = view["services"]
    assert [(w["id"], w["state"]) for w in svc_a["worker_rows"]] == [
        ("w1", "serving"),
        ("w2", "suspect"),
    ]
    assert [(w["id"], w["state"]) for w in svc_b["worker_rows"]] == [("w3", "draining")]
    assert svc_b["queue_depth"] == 3
    assert view["counters"] == {"requests": 5}
