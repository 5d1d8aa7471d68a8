"""A worker's Prometheus metrics (``mole worker --metrics-port``), off unless asked for.

What an operator needs to know about one GPU worker: how full its batches are, how long
each adapter takes, how many tokens it reads, how much memory it holds, and how long the
model took to load. The batcher reports each batch once (:meth:`WorkerMetrics.observe_batch`)
— a handful of histogram updates per batch, not per token — and memory is read only when
Prometheus scrapes, through gauges whose value is a function.

Each worker has its own registry (never prometheus_client's global one), so several
workers or tests in one process never mix their figures.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Batch sizes are small integers: one bucket each up to 8, then powers of two.
BATCH_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 128)
#: Seconds per request, from a tiny CPU model (ms) to a long generation on a 7B model.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True, slots=True)
class Computed:
    """One request of a computed batch, as the metrics see it."""

    adapter: str | None  # the registry's adapter name; None for the bare base model
    tokens_in: int  # prompt tokens read
    outcome: object  # the result, or the exception it failed with
    seconds: float  # from its arrival at the worker to its answer


def _rss_bytes() -> float:
    """Peak resident memory of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(usage if sys.platform == "darwin" else usage * 1024)


def _gpu_bytes() -> float:
    """Memory torch has allocated on the current CUDA device; 0 without CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0.0
    return float(torch.cuda.memory_allocated())


class WorkerMetrics:
    """The metrics of one worker process, on a registry of its own."""

    def __init__(self, model_key: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.model_key = model_key
        labels = ("model",)
        self.batch_size = Histogram(
            "mole_worker_batch_size",
            "requests computed together in one forward pass",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "mole_worker_request_seconds",
            "time from a request's arrival at the worker to its answer, per adapter",
            ("model", "adapter"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens_in = Counter(
            "mole_worker_tokens_in",
            "prompt tokens read, per adapter",
            ("model", "adapter"),
            registry=self.registry,
        )
        self.requests = Counter(
            "mole_worker_requests",
            "requests computed, per adapter and outcome",
            ("model", "adapter", "outcome"),
            registry=self.registry,
        )
        self.load_seconds = Gauge(
            "mole_worker_model_load_seconds",
            "seconds it took to load the base model and its adapters",
            labels,
            registry=self.registry,
        )
        memory = Gauge(
            "mole_worker_memory_bytes",
            "peak resident memory of the worker process",
            labels,
            registry=self.registry,
        )
        memory.labels(model_key).set_function(_rss_bytes)
        gpu = Gauge(
            "mole_worker_gpu_memory_bytes",
            "memory allocated by torch on the worker's CUDA device (0 without CUDA)",
            labels,
            registry=self.registry,
        )
        gpu.labels(model_key).set_function(_gpu_bytes)

    def observe_load(self, seconds: float) -> None:
        self.load_seconds.labels(self.model_key).set(seconds)

    def observe_batch(self, batch: Iterable[Computed]) -> None:
        """One computed batch (a failed request is counted, its time kept out of latency)."""
        size = 0
        for item in batch:
            size += 1
            adapter = item.adapter or "__base__"
            self.tokens_in.labels(self.model_key, adapter).inc(item.tokens_in)
            failed = isinstance(item.outcome, Exception)
            self.requests.labels(self.model_key, adapter, "error" if failed else "ok").inc()
            if not failed:
                self.latency.labels(self.model_key, adapter).observe(item.seconds)
        if size:
            self.batch_size.labels(self.model_key).observe(size)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the ``/metrics`` endpoint on a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_address[1])
