"""Prometheus metrics, correct across gunicorn worker processes, off the request path.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``mole frontend`` creates and empties it before
gunicorn starts), prometheus_client writes every process's values to files there and the
``/metrics`` endpoint aggregates them with a ``MultiProcessCollector``. Without it (tests,
a single process) the app's own registry is exposed.

A request only adds to plain in-memory tallies; they are folded into the Prometheus
families at most every ``flush_interval_s`` (a timer on the event loop) and before this
process answers ``/metrics``. A metric update in multiprocess mode writes a memory-mapped
file under a lock, several per request; batched, that cost is paid per label set per
interval instead. Another process's figures reach ``/metrics`` within one interval.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

Labels = tuple[str, ...]


class Metrics:
    """The frontend's metric families, registered in one registry, fed in batches."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, flush_interval_s: float = 0.25
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self._interval = flush_interval_s
        self._counts: dict[tuple[Counter, Labels], float] = defaultdict(float)
        self._observations: dict[tuple[Histogram, Labels], list[float]] = defaultdict(list)
        self._timer: asyncio.TimerHandle | None = None
        self.http_requests = Counter(
            "mole_http_requests_total",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "mole_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.classifications = Counter(
            "mole_classifications_total",
            "Classifications by outcome",
            ["language", "task", "model", "outcome"],
            registry=self.registry,
        )
        self.dispatch_latency = Histogram(
            "mole_dispatch_duration_seconds",
            "Time from dispatch to the worker's reply",
            ["model"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "mole_rate_limited_total",
            "Requests refused by a rate limit (frontend.limits)",
            ["limit"],
            registry=self.registry,
        )

    # -- what the app records ------------------------------------------------------------

    def http_request(self, method: str, route: str, status: int, seconds: float | None) -> None:
        self._counts[(self.http_requests, (method, route, str(status)))] += 1
        if seconds is not None:
            self._observations[(self.http_latency, (route,))].append(seconds)
        self._due()

    def classification(self, language: str, task: str, model: str, outcome: str) -> None:
        self._counts[(self.classifications, (language, task, model, outcome))] += 1
        self._due()

    def dispatched(self, model: str, seconds: float) -> None:
        self._observations[(self.dispatch_latency, (model,))].append(seconds)
        self._due()

    def refused(self, limit: str) -> None:
        self._counts[(self.rate_limited, (limit,))] += 1
        self._due()

    # -- batching ------------------------------------------------------------------------

    def _due(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script, a thread): no batching
            self.flush()
            return
        self._timer = loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Fold the tallies into the Prometheus families (and their files)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counts, self._counts = self._counts, defaultdict(float)
        observations, self._observations = self._observations, defaultdict(list)
        for (counter, labels), amount in counts.items():
            counter.labels(*labels).inc(amount)
        for (histogram, labels), values in observations.items():
            child: Any = histogram.labels(*labels)
            for value in values:
                child.observe(value)

    def exposition(self) -> tuple[bytes, str]:
        """The text format of every process's metrics (or this registry's)."""
        self.flush()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Called from gunicorn's ``child_exit`` so a dead worker's live gauges are dropped."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
