"""Prometheus metrics, correct across gunicorn worker processes.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``mole frontend`` creates and empties it before
gunicorn starts), prometheus_client writes every process's values to files there and the
``/metrics`` endpoint aggregates them with a ``MultiProcessCollector``. Without it (tests,
a single process) the app's own registry is exposed.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The frontend's metric families, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict = {}
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

    def child(self, family, *labels: str):
        """``family.labels(*labels)``, remembered: the lookup is a third of a metric update's
        cost in multiprocess mode and the label sets here are few."""
        key = (id(family), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*labels)
        return found

    def exposition(self) -> tuple[bytes, str]:
        """The text format of every process's metrics (or this registry's)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Called from gunicorn's ``child_exit`` so a dead worker's live gauges are dropped."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
