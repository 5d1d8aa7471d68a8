"""The resident-model pool: least recently used eviction, thread-safe, infer through it."""

from __future__ import annotations

import threading

import pytest

from mole.worker.engine.errors import InvalidPayload
from mole.worker.engine.pool import ModelPool
from tests.worker.enginehelpers import REGISTRY, payload_for, settings_for


@pytest.fixture
def pool(tiny_models):
    pool = ModelPool(
        max_resident=2, registry=REGISTRY, settings=settings_for(tiny_models, warmup=False)
    )
    yield pool
    pool.close()


def test_lru_eviction_frees_the_least_recently_used(pool):
    a = pool.get("llama-2-7b-hf")
    pool.get("bloomz-7b1")
    assert pool.get("llama-2-7b-hf") is a  # a hit, and now the most recent
    pool.get("facebook/xglm-7.5B")
    assert pool.resident == ["llama-2-7b-hf", "facebook/xglm-7.5B"]
    assert pool.evictions == 1
    assert pool.loads == 3
    pool.get("qwen2.5-7b-instruct")
    assert pool.resident == ["facebook/xglm-7.5B", "qwen2.5-7b-instruct"]
    assert "llama-2-7b-hf" not in pool.resident
    assert pool.get("llama-2-7b-hf") is not a  # reloaded
    assert a.loaded.model is None  # the evicted engine let go of its model


def test_infer_returns_the_worker_reply(pool):
    expert = REGISTRY.resolve("finance/news", "tr")
    reply = pool.infer("facebook/xglm-7.5B", payload_for(expert))
    assert reply["result"] in expert.label_set
    assert reply["model"] == "facebook/xglm-7.5B"
    assert reply["tiny_model"] is True
    with pytest.raises(InvalidPayload) as err:
        pool.infer("facebook/xglm-7.5B", {"task": "finance/news", "language": "en", "text": "x"})
    assert err.value.field == "language"


def test_concurrent_gets_load_once():
    calls = []
    gate = threading.Event()

    class FakeEngine:
        def __init__(self, key):
            self.key = key
            self.closed = False

        def close(self):
            self.closed = True

    def loader(key):
        calls.append(key)
        gate.wait(5)
        return FakeEngine(key)

    pool = ModelPool(max_resident=1, registry=REGISTRY, loader=loader)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(pool.get("bloomz-7b1"))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert calls == ["bloomz-7b1"]
    assert len({id(r) for r in results}) == 1
    first = results[0]
    pool.get("llama-2-7b-hf")
    assert first.closed
    assert pool.resident == ["llama-2-7b-hf"]
    with pytest.raises(ValueError, match="max_resident must be at least 1"):
        ModelPool(max_resident=0, registry=REGISTRY)


def test_a_request_past_its_timeout_is_not_computed(pool):
    from mole.protocol.errors import DeadlineExceeded

    expert = REGISTRY.resolve("finance/rating", "zh")
    engine = pool.get("bloomz-7b1")
    with engine._lock:  # the model is busy: the request waits, its time runs out
        result = []
        t = threading.Thread(
            target=lambda: result.append(
                _catch(lambda: pool.infer("bloomz-7b1", payload_for(expert), timeout=0.05))
            )
        )
        t.start()
        t.join(0.5)
    t.join(10)
    assert isinstance(result[0], DeadlineExceeded)
    assert pool.infer("bloomz-7b1", payload_for(expert), timeout=30)["result"] in "12345"


def _catch(fn):
    try:
        return fn()
    except Exception as err:
        return err
