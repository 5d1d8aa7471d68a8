"""A worker's metrics, scraped over HTTP and read back with prometheus_client's parser."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mole.worker.metrics import Computed, WorkerMetrics


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_batches_latency_tokens_and_memory_are_scraped():
    metrics = WorkerMetrics("tiny-llama")
    port = metrics.serve(0)
    metrics.observe_load(3.25)
    metrics.observe_batch(
        [
            Computed("fin-a", 3, {"ok": 1}, 0.02),
            Computed("fin-b", 10, ValueError("bad"), 0.5),
            Computed(None, 1, {"ok": 1}, 3.0),
        ]
    )
    metrics.observe_batch([Computed("fin-a", 3, {"ok": 1}, 0.03)])
    samples = _scrape(port)
    model = ("model", "tiny-llama")
    assert samples[("mole_worker_model_load_seconds", (model,))] == 3.25
    assert samples[("mole_worker_batch_size_count", (model,))] == 2
    assert samples[("mole_worker_batch_size_sum", (model,))] == 4
    assert samples[("mole_worker_batch_size_bucket", (("le", "1.0"), model))] == 1
    a = (("adapter", "fin-a"), model)
    assert samples[("mole_worker_tokens_in_total", a)] == 6
    assert samples[("mole_worker_request_seconds_count", a)] == 2
    assert samples[("mole_worker_request_seconds_sum", a)] == pytest.approx(0.05)
    b_error = (("adapter", "fin-b"), model, ("outcome", "error"))
    assert samples[("mole_worker_requests_total", b_error)] == 1
    # a failed request is counted as such, and its time is kept out of the latency figures
    assert ("mole_worker_request_seconds_count", (("adapter", "fin-b"), model)) not in samples
    base = ("adapter", "__base__")
    assert samples[("mole_worker_request_seconds_count", (base, model))] == 1
    assert samples[("mole_worker_request_seconds_bucket", (base, ("le", "2.5"), model))] == 0
    assert samples[("mole_worker_request_seconds_bucket", (base, ("le", "5.0"), model))] == 1
    assert samples[("mole_worker_memory_bytes", (model,))] > 10 * 2**20
    assert samples[("mole_worker_gpu_memory_bytes", (model,))] == 0


def test_two_workers_in_one_process_keep_their_own_figures():
    one, two = WorkerMetrics("m1"), WorkerMetrics("m2")
    one.observe_batch([Computed("x", 1, {}, 0.1)])
    port = two.serve(0)
    samples = _scrape(port)
    assert not any(labels and ("model", "m1") in labels for _, labels in samples)
