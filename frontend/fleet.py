"""What the fleet dashboard shows, computed from the analytics store and the broker's status.

The dashboard page (``frontend/dashboard/``) polls one admin endpoint every few seconds, so
each answer must cost little however busy the service is: every figure here comes from
SQL aggregates over a bounded time window (one ``GROUP BY`` per view), never from reading
request rows into Python. Latency percentiles are estimated from fixed histogram buckets
counted in SQL — the way Prometheus estimates them — so their cost does not grow with the
request rate, and their error is bounded by the bucket widths (:data:`LATENCY_BOUNDS_MS`).

The functions take a plain :class:`sqlite3.Connection` on the analytics database (the
``events`` table of :mod:`mole.frontend.analytics`) and the current time, so tests drive
them with a real SQLite file and explicit times.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

#: Upper bounds (ms) of the latency histogram buckets; the last bucket is open-ended.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 750,
    1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000,
)  # fmt: skip

#: The groupings the charts offer: a column of ``events`` (or an expression of them).
GROUPS: dict[str, str] = {
    "service": "COALESCE(model, 'none')",
    "expert": "COALESCE(task, '?') || ' · ' || COALESCE(language, '?')",
}


@dataclass(frozen=True, slots=True)
class Window:
    """The time range the charts cover: ``points`` buckets of ``bucket_s`` up to ``now``."""

    now: float
    span_s: float = 600.0
    bucket_s: float = 10.0

    @property
    def points(self) -> int:
        return max(1, int(self.span_s // self.bucket_s))

    @property
    def start(self) -> float:
        """Start of the first bucket: buckets end at ``now`` (the last one is partial)."""
        return self.now - self.points * self.bucket_s


def estimate_percentile(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile of a latency histogram (counts per :data:`LATENCY_BOUNDS_MS`
    bucket, plus one open-ended bucket), interpolated linearly inside its bucket.

    A value in the open-ended bucket is reported as the last bound: the histogram cannot
    say more, and the dashboard marks such values with "≥".
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])
            lower = 0.0 if index == 0 else float(LATENCY_BOUNDS_MS[index - 1])
            upper = float(LATENCY_BOUNDS_MS[index])
            return round(lower + (upper - lower) * (rank - seen) / count, 3)
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])


def _histogram_columns() -> str:
    """``SUM(...)`` columns counting successful requests per latency bucket."""
    columns = []
    lower = None
    for bound in LATENCY_BOUNDS_MS:
        low = "" if lower is None else f"latency_ms > {lower} AND "
        columns.append(f"SUM(ok = 1 AND {low}latency_ms <= {bound})")
        lower = bound
    columns.append(f"SUM(ok = 1 AND latency_ms > {lower})")
    return ", ".join(columns)


_HISTOGRAM = _histogram_columns()


def _empty_series(points: int) -> dict[str, list[Any]]:
    return {"requests": [0] * points, "errors": [0] * points,
            "p50": [None] * points, "p99": [None] * points}  # fmt: skip


def time_series(db: sqlite3.Connection, window: Window, *, top: int = 8) -> dict[str, Any]:
    """Request rate, errors and latency percentiles per bucket: overall, per service (base
    model) and per expert (task · language), for the ``top`` busiest of each in the window.

    Returns ``{"bucket_s", "start", "points", "overall": series, "service": {name: series},
    "expert": {name: series}}`` where a series is ``{"requests": [...], "errors": [...],
    "p50": [...], "p99": [...]}`` (counts per bucket; ms or None where nothing succeeded).
    """
    points = window.points
    bucket = f"CAST((ts - {window.start!r}) / {window.bucket_s!r} AS INTEGER)"
    result: dict[str, Any] = {
        "bucket_s": window.bucket_s,
        "start": window.start,
        "points": points,
        "latency_bounds_ms": list(LATENCY_BOUNDS_MS),
    }
    views: dict[str, str] = {"overall": "'all'", **GROUPS}
    for view, key in views.items():
        rows = db.execute(
            f"SELECT {key} AS k, {bucket} AS b, COUNT(*), SUM(1 - ok), {_HISTOGRAM}"
            " FROM events WHERE ts >= ? AND ts < ? GROUP BY k, b",
            (window.start, window.now),
        ).fetchall()
        totals: dict[str, int] = {}
        for row in rows:
            totals[row[0]] = totals.get(row[0], 0) + row[2]
        kept = sorted(totals, key=lambda k: (-totals[k], k))[:top]
        series = {name: _empty_series(points) for name in kept}
        for name, index, count, errors, *histogram in rows:
            if name not in series or not 0 <= index < points:
                continue
            counts = [int(c or 0) for c in histogram]
            target = series[name]
            target["requests"][index] = count
            target["errors"][index] = int(errors or 0)
            target["p50"][index] = estimate_percentile(counts, 0.50)
            target["p99"][index] = estimate_percentile(counts, 0.99)
        if view == "overall":
            result["overall"] = series.get("all", _empty_series(points))
        else:
            result[view] = series
    return result


def routing_breakdown(
    db: sqlite3.Connection, window: Window, *, limit: int = 50
) -> list[dict[str, Any]]:
    """Recent classifications by route (language → task → model), busiest first."""
    rows = db.execute(
        "SELECT COALESCE(language, '?'), COALESCE(task, '?'), COALESCE(model, 'none'),"
        " COUNT(*), SUM(1 - ok) FROM events WHERE ts >= ? AND ts < ?"
        " GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3 LIMIT ?",
        (window.start, window.now, limit),
    ).fetchall()
    return [
        {"language": lang, "task": task, "model": model, "requests": n, "errors": int(err or 0)}
        for lang, task, model, n, err in rows
    ]


def worker_state(worker: dict[str, Any]) -> str:
    """``draining``, ``suspect`` or ``serving``, from a worker row of ``mmi.status``.

    The broker marks a worker that keeps timing out as suspect and one that is shutting
    down as draining; brokers that know neither state report neither flag.
    """
    if worker.get("draining") or worker.get("state") == "draining":
        return "draining"
    if worker.get("suspect") or worker.get("state") == "suspect":
        return "suspect"
    return "serving"


def fleet_view(status: dict[str, Any]) -> dict[str, Any]:
    """The broker's ``mmi.status`` shaped for the page: services sorted by name, each with
    its workers (sorted by id) and each worker's state."""
    workers_by_service: dict[str, list[dict[str, Any]]] = {}
    for worker in status.get("workers", []):
        row = dict(worker)
        row["state"] = worker_state(worker)
        workers_by_service.setdefault(str(worker.get("service")), []).append(row)
    services = []
    for name in sorted(set(status.get("services", {})) | set(workers_by_service)):
        row = dict(status.get("services", {}).get(name, {}))
        row["name"] = name
        row["worker_rows"] = sorted(
            workers_by_service.get(name, []), key=lambda w: str(w.get("id"))
        )
        services.append(row)
    return {
        "broker": status.get("broker", {}),
        "counters": status.get("counters", {}),
        "services": services,
    }
