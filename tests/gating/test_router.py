"""The hashed Q-learning task router: data, held-out accuracy, persistence, online learning."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from mole.gating.errors import ArtifactError, InvalidInput, UnknownDomain, UnknownTask
from mole.gating.features import FeatureSpec, Featurizer
from mole.gating.router import Example, QRouter, TrainConfig, read_examples
from mole.gating.settings import DEFAULT_HELDOUT_DATA, DEFAULT_ROUTER_DIR, DEFAULT_TRAIN_DATA

TASKS = ["rating", "pii", "news", "esci"]


@pytest.fixture(scope="module")
def train_data():
    return read_examples(DEFAULT_TRAIN_DATA)


@pytest.fixture(scope="module")
def heldout():
    return [ex for path in DEFAULT_HELDOUT_DATA for ex in read_examples(path)]


@pytest.fixture(scope="module")
def shipped():
    return QRouter.load(DEFAULT_ROUTER_DIR)


def test_training_data_is_varied_and_separate_from_heldout(train_data, heldout):
    rows = [json.loads(line) for line in DEFAULT_TRAIN_DATA.open(encoding="utf-8")]
    assert len(rows) >= 400
    assert len({r["description"] for r in rows}) == len(rows)
    languages = Counter(r["language"] for r in rows)
    assert len(languages) >= 8, languages
    assert min(languages.values()) >= 20, languages
    assert set(Counter(r["task"] for r in rows)) == set(TASKS)
    assert {ex.description for ex in train_data}.isdisjoint({ex.description for ex in heldout})
    assert len(heldout) >= 100


def test_shipped_router_heldout_accuracy(shipped, heldout):
    accuracy = shipped.accuracy(heldout)
    print(f"shipped router held-out accuracy {accuracy:.4f} on {len(heldout)}")
    assert accuracy >= 0.95
    assert shipped.domains == {"finance": TASKS}  # registry order
    assert shipped.report["validation_accuracy"] >= 0.95


def test_training_from_scratch_reaches_95_on_heldout(train_data, heldout):
    router = QRouter({"finance": TASKS}, config=TrainConfig(seed=5))
    rows = []
    report = router.train(train_data, validation=heldout, progress=rows.append)
    assert len(rows) == router.config.epochs
    assert rows[-1]["epsilon"] == pytest.approx(0.01, abs=1e-3)  # decayed 0.2 -> 0.01
    assert rows[-1]["mean_reward"] > 0.9
    assert report["validation_accuracy"] >= 0.95
    assert report["train_accuracy"] >= 0.98


def test_untrained_router_is_not_accurate(heldout):
    """The accuracy comes from training: a fresh router is at chance."""
    assert QRouter({"finance": TASKS}).accuracy(heldout) < 0.5


def test_save_load_roundtrip_and_small_artifact(tmp_path, train_data):
    router = QRouter({"finance": TASKS}, config=TrainConfig(epochs=5))
    router.train(train_data[:200])
    path = router.save(tmp_path / "r")
    assert (path / "meta.json").is_file()
    assert (path / "weights.npz").is_file()
    assert (path / "weights.npz").stat().st_size < 2_000_000
    loaded = QRouter.load(path)
    for ex in train_data[:50]:
        a = router.route(ex.description).q_values
        b = loaded.route(ex.description).q_values
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) < 1e-2 for k in a)  # float16 storage


def test_online_feedback_moves_q_and_persists(tmp_path):
    router = QRouter.load(DEFAULT_ROUTER_DIR)
    text = "Quantify the vibe of this crypto exchange shoutout"
    first = router.route(text).q_values["news"]
    for _ in range(30):
        router.feedback(text, "news", 1.0)
        for other in ("rating", "pii", "esci"):
            router.feedback(text, other, 0.0)
    assert router.route(text).task == "news"
    assert router.route(text).q_values["news"] > first
    assert router.feedback_count == 120
    router.save(tmp_path / "online")
    again = QRouter.load(tmp_path / "online")
    assert again.route(text).task == "news"
    assert again.feedback_count == 120
    # the shipped artifact on disk is untouched
    assert QRouter.load(DEFAULT_ROUTER_DIR).feedback_count == 0


def test_feedback_errors(shipped):
    with pytest.raises(UnknownTask) as err:
        shipped.feedback("Rate this", "summarise", 1.0)
    assert err.value.known == TASKS
    assert err.value.code == "unknown_task"
    with pytest.raises(InvalidInput):
        shipped.feedback("Rate this", "rating", 2.0)
    with pytest.raises(InvalidInput):
        shipped.feedback("", "rating", 1.0)
    with pytest.raises(UnknownDomain):
        shipped.feedback("Rate this", "rating", 1.0, domain="legal")


def test_route_errors(shipped):
    with pytest.raises(InvalidInput):
        shipped.route("   ")
    with pytest.raises(UnknownDomain) as err:
        shipped.route("Rate this", "legal")
    assert err.value.known == ["finance"]


def test_several_domains_are_separate_routers(train_data):
    router = QRouter(
        {"finance": TASKS, "legal": ["contracts", "rating"]}, config=TrainConfig(epochs=10)
    )
    legal = [
        Example("Find the termination clause in this contract", "legal", "contracts"),
        Example("Rate the sentiment of this court ruling", "legal", "rating"),
    ] * 10
    router.train(list(train_data[:100]) + legal)
    assert router.route("Find the termination clause in this contract", "legal").task == "contracts"
    with pytest.raises(UnknownDomain):
        router.route("Rate it")  # several domains: must name one
    with pytest.raises(UnknownTask):
        router.train([Example("x", "legal", "pii")])


def test_features_are_stable_and_cover_cjk():
    f = Featurizer(FeatureSpec())
    a = f("Classify the topic of this news article")
    b = f("classify   the TOPIC of this news article")  # case and spaces normalised
    assert np.array_equal(a[0], b[0])
    assert np.isclose(np.linalg.norm(a[1]), 1.0)
    idx, _ = f("这篇报道主要讲的是什么")
    assert len(idx) > 20  # character n-grams where there are no spaces
    assert a[0].max() < FeatureSpec().dim


def test_bad_artifacts(tmp_path):
    with pytest.raises(ArtifactError, match="mole gating train"):
        QRouter.load(tmp_path)
    (tmp_path / "meta.json").write_text('{"format": "other"}')
    with pytest.raises(ArtifactError, match="format"):
        QRouter.load(tmp_path)
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(ArtifactError, match="unreadable"):
        QRouter.load(tmp_path)
    meta = json.loads((DEFAULT_ROUTER_DIR / "meta.json").read_text())
    meta["features"]["n_bits"] = 34  # would be a 64 GiB matrix
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="n_bits"):
        QRouter.load(tmp_path)
    good = QRouter({"finance": TASKS}).save(tmp_path / "g")
    (good / "weights.npz").write_bytes(b"nope")
    with pytest.raises(ArtifactError):
        QRouter.load(good)


def test_read_examples_names_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"description": "a", "domain": "finance", "task": "pii"}\n{oops\n')
    with pytest.raises(InvalidInput, match=r"d.jsonl:2: not valid JSON"):
        read_examples(p)
    p.write_text('{"description": "a", "domain": "finance"}\n')
    with pytest.raises(InvalidInput, match=r":1: 'task' must be a non-empty string"):
        read_examples(p)
    with pytest.raises(InvalidInput, match="not found"):
        read_examples(tmp_path / "none.jsonl")
    p.write_text("\n\n")
    with pytest.raises(InvalidInput, match="no examples"):
        read_examples(p)


def test_reads_the_original_train_combined_json(tmp_path):
    p = tmp_path / "train_combined.json"
    p.write_text(
        json.dumps(
            [
                {
                    "prompt": "Rate the sentiment",
                    "domain": "finance",
                    "task": "rating",
                    "language": "en",
                },
                {"prompt": "Find PII", "domain": "finance", "task": "pii"},
            ]
        )
    )
    assert read_examples(p) == [
        Example("Rate the sentiment", "finance", "rating"),
        Example("Find PII", "finance", "pii"),
    ]
    p.write_text(json.dumps([{"prompt": "x", "domain": "finance"}]))
    with pytest.raises(InvalidInput, match=r"train_combined.json\[0\]: 'task'"):
        read_examples(p)


def test_repeated_descriptions_reuse_the_route_until_weights_change(monkeypatch):
    import mole.gating.router as router_module

    shipped = QRouter.load(DEFAULT_ROUTER_DIR)  # its own: this test changes weights
    text = "Rate the sentiment of this financial statement"
    calls = []
    featurize = shipped.featurize
    monkeypatch.setattr(shipped, "featurize", lambda d: calls.append(d) or featurize(d))
    first = shipped.route(text)
    first.q_values["rating"] = -99.0  # a caller's copy: must not leak into the cache
    second = shipped.route(text)
    assert calls == [text]  # featurized once
    assert second.task == first.task
    assert second.q_values["rating"] != -99.0
    shipped.feedback(text, second.task, 0.0)  # weights change: the route is recomputed
    third = shipped.route(text)
    # feedback featurizes it too (and re-scores the threshold's data), then the route again
    assert calls.count(text) == 3
    assert third.q_values[second.task] < second.q_values[second.task]
    monkeypatch.setattr(router_module, "ROUTE_CACHE_SIZE", 3)
    for i in range(5):
        shipped.route(f"{text} number {i}")
    assert len(shipped._routes) == 3
