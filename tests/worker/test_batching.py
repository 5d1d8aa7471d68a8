"""The batching handler: requests that arrive together are computed together, each
answered exactly once, a bad or expired one alone."""

from __future__ import annotations

import threading
import time

import pytest

from mole.worker.engine.batching import BatchingHandler
from mole.worker.handler import Responder, WorkRequest
from tests.worker.enginehelpers import REGISTRY, load_engine, payload_for


class Recorder(Responder):
    """Collects the one answer of a request (the runtime's seam, without a socket)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answers: list[tuple] = []
        self.answered_on: int | None = None  # the thread that gave the final answer

    def partial(self, payload) -> None:
        self.answers.append(("partial", payload))

    def final(self, payload) -> None:
        self.answers.append(("final", payload))
        self.answered_on = threading.get_ident()
        self.done.set()

    def error(self, code, message, details=None) -> None:
        self.answers.append(("error", str(code), message))
        self.done.set()


@pytest.fixture(scope="module")
def engine(tiny_models):
    return load_engine(tiny_models, "llama-2-7b-hf")


def _submit_all(handler, payloads, deadline=None):
    recorders = []
    for i, payload in enumerate(payloads):
        rec = Recorder()
        handler.submit(WorkRequest(f"r{i}", payload, deadline=deadline), rec)
        recorders.append(rec)
    for rec in recorders:
        assert rec.done.wait(60), "a request was never answered"
    return recorders


def test_concurrent_requests_are_batched_with_mixed_adapters(engine):
    experts = [REGISTRY.resolve("finance/rating", c) for c in ("en", "de", "fr")]
    payloads = [
        payload_for(experts[i % 3], f"Review number {i}: profits were up {i}%.") for i in range(12)
    ]
    handler = BatchingHandler(engine, max_batch=8, batch_wait_ms=200)
    handler.start()
    try:
        recorders = _submit_all(handler, payloads)
    finally:
        handler.close()
    # submit() only enqueues: every answer is computed and sent from the handler's thread
    assert {rec.answered_on for rec in recorders}.isdisjoint({threading.get_ident(), None})
    assert handler.largest_batch > 1
    assert handler.batches < 12
    for payload, rec in zip(payloads, recorders, strict=True):
        assert len(rec.answers) == 1
        assert rec.answers[0][0] == "final"
        reply = rec.answers[0][1]
        alone = engine.infer(payload)
        assert reply["label"] == alone["label"]
        for label, p in alone["probabilities"].items():
            assert abs(reply["probabilities"][label] - p) < 1e-5
        assert reply["timings"]["batch_size"] >= 1


def test_a_bad_request_fails_alone(engine):
    good = payload_for(REGISTRY.resolve("finance/rating", "en"))
    payloads = [
        good,
        {"task": "finance/rating", "language": "tr", "text": "x"},
        good,
        {"task": "finance/rating", "language": "en", "text": ""},
        "junk",
    ]
    handler = BatchingHandler(engine, max_batch=8, batch_wait_ms=200)
    handler.start()
    try:
        recorders = _submit_all(handler, payloads)
    finally:
        handler.close()
    kinds = [rec.answers[0][0] for rec in recorders]
    assert kinds == ["final", "error", "final", "error", "error"]
    assert recorders[1].answers[0][1] == "bad_request"
    assert "language" in recorders[1].answers[0][2]
    assert "text" in recorders[3].answers[0][2]
    assert "payload" in recorders[4].answers[0][2]


def test_expired_requests_are_not_computed(engine):
    handler = BatchingHandler(engine, max_batch=4, batch_wait_ms=1)
    handler.start()
    try:
        recorders = _submit_all(
            handler,
            [payload_for(REGISTRY.resolve("finance/rating", "en"))] * 3,
            deadline=time.monotonic() - 1.0,
        )
    finally:
        handler.close()
    assert all(rec.answers[0][:2] == ("error", "deadline_exceeded") for rec in recorders)
    assert handler.batches == 0


def test_metadata_names_tasks_languages_adapters(engine):
    meta = BatchingHandler(engine).metadata()
    assert meta["tasks"] == ["finance/rating"]
    assert meta["languages"] == ["de", "en", "fr"]
    assert meta["adapters"] == ["fin-sentiment-de", "fin-sentiment-en", "fin-sentiment-fr"]
    assert meta["tiny_model"] is True
    assert meta["max_batch"] >= 1


def test_metrics_see_every_computed_batch_and_its_adapters(engine):
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from mole.worker.metrics import WorkerMetrics

    experts = [REGISTRY.resolve("finance/rating", c) for c in ("en", "de")]
    payloads = [payload_for(experts[i % 2], f"Profits rose {i}%.") for i in range(6)]
    payloads.append({"task": "finance/rating", "language": "en", "text": ""})  # refused early
    metrics = WorkerMetrics(engine.base_model_key)
    handler = BatchingHandler(engine, max_batch=8, batch_wait_ms=200, metrics=metrics)
    handler.start()
    try:
        _submit_all(handler, payloads)
    finally:
        handler.close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in family.samples
    }
    model = ("model", engine.base_model_key)
    assert samples[("mole_worker_batch_size_count", (model,))] == handler.batches
    assert samples[("mole_worker_batch_size_sum", (model,))] == 6  # the refused one never ran
    for expert in experts:
        adapter = ("adapter", expert.adapter_name)
        assert samples[("mole_worker_request_seconds_count", (adapter, model))] == 3
        assert samples[("mole_worker_tokens_in_total", (adapter, model))] > 3
