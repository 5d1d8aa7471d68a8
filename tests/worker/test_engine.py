"""The engine on real tiny models of every registry architecture (random weights)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from mole.worker.engine.errors import InvalidPayload, ModelLoadError
from mole.worker.engine.scoring import ScoreRow, score_batch, score_full
from tests.worker.enginehelpers import REGISTRY, load_engine, payload_for

BASE_KEYS = list(REGISTRY.base_models)


@pytest.fixture(scope="module")
def engines(tiny_models):
    return {key: load_engine(tiny_models, key) for key in BASE_KEYS}


@pytest.mark.parametrize("key", BASE_KEYS)
def test_every_architecture_answers_each_of_its_tasks(engines, key):
    engine = engines[key]
    assert engine.tiny
    assert engine.metadata()["tiny_model"] is True
    tasks_seen = set()
    for expert in engine.experts:
        job = engine.prepare(payload_for(expert))
        if expert.kind == "extraction":
            job.max_new_tokens = 12  # the registry's 512 random tokens take seconds each
        reply = engine.run([job])[0]
        tasks_seen.add(expert.task_key)
        assert reply["tiny_model"] is True
        assert reply["model"] == key
        assert reply["adapter"] == expert.adapter_name
        if expert.kind == "classification":
            assert reply["result"] in expert.label_set
            assert reply["label"] == reply["result"]
            probs = reply["probabilities"]
            assert set(probs) == set(expert.label_set)
            assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6)
            assert reply["confidence"] == pytest.approx(probs[reply["label"]])
            assert reply["confidence"] == pytest.approx(max(probs.values()))
        else:
            assert isinstance(reply["result"], str)
            assert reply["result"].startswith("[")
            assert isinstance(reply["entities"], list)
        assert reply["input_tokens"] > 0
        assert reply["truncated"] is False
    assert tasks_seen == {e.task_key for e in REGISTRY.experts_for_base_model(key)}


def test_shared_adapter_directory_is_loaded_once(engines):
    engine = engines["mistral-7B-Instruct-v0.3"]
    loaded = engine.loaded
    # pii (7 languages) share one directory, esci-es has its own: two loaded adapters
    assert len(loaded.adapter_dirs) == 2
    pii_keys = {
        loaded.adapter_names[f"fin-pii-{c}"] for c in ("en", "de", "fr", "nl", "it", "es", "sv")
    }
    assert len(pii_keys) == 1
    assert loaded.adapter_names["fin-esci-es"] not in pii_keys
    assert set(loaded.model.peft_config) == set(loaded.adapter_dirs)
    meta = engine.metadata()
    assert "finance/pii" in meta["tasks"]
    assert "finance/esci" in meta["tasks"]
    assert "fin-pii-sv" in meta["adapters"]
    assert "sv" in meta["languages"]


def test_mixed_adapter_batch_scores_equal_one_at_a_time(engines):
    engine = engines["llama-2-7b-hf"]
    texts = [
        "Record profits.",
        "The app keeps crashing and support never answers my calls.",
        "Neutral.",
        "Fees went up again without notice, very disappointing quarter.",
    ]
    jobs = []
    for i, text in enumerate(texts):
        expert = engine.experts[i % len(engine.experts)]
        jobs.append(engine.prepare(payload_for(expert, text)))
    # and rows from another base model's adapters cannot mix; use two adapters on mistral
    batched = engine.run(jobs)
    single = [engine.run([job])[0] for job in jobs]
    for b, s in zip(batched, single, strict=True):
        for label in b["probabilities"]:
            assert abs(b["probabilities"][label] - s["probabilities"][label]) < 1e-5


def test_mixed_adapters_and_tasks_in_one_batch(engines):
    engine = engines["mistral-7B-Instruct-v0.3"]
    esci = REGISTRY.resolve("finance/esci", "es")
    pii = REGISTRY.resolve("finance/pii", "de")
    jobs = [
        engine.prepare(payload_for(esci, query="q", product="p")),
        engine.prepare(payload_for(pii, "Jan wohnt in Berlin.")),
        engine.prepare(payload_for(esci, query="zapatos", product="zapatos rojos talla 40")),
    ]
    for job in jobs:
        job.max_new_tokens = 3
    batched = engine.run(jobs)
    assert batched[1]["adapter"] == "fin-pii-de"
    assert "entities" in batched[1]
    for i in (0, 2):
        alone = engine.run([jobs[i]])[0]
        for label, p in alone["probabilities"].items():
            assert abs(batched[i]["probabilities"][label] - p) < 1e-5


def test_adapters_change_the_scores(engines):
    """Otherwise the mixed-batch test above would pass with adapters ignored."""
    engine = engines["mistral-7B-Instruct-v0.3"]
    job = engine.prepare(payload_for(REGISTRY.resolve("finance/esci", "es")))
    model = engine.loaded.model
    with_adapter = score_full(
        model, ScoreRow(job.prompt_ids, job.prompt.label_ids, job.adapter_key)
    )
    other = next(k for k in engine.loaded.adapter_dirs if k != job.adapter_key)
    with_other = score_full(model, ScoreRow(job.prompt_ids, job.prompt.label_ids, other))
    assert max(abs(a - b) for a, b in zip(with_adapter, with_other, strict=True)) > 1e-3


@pytest.mark.parametrize(
    "key",
    [
        "unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        "facebook/xglm-7.5B",
        "qwen2.5-7b-instruct",
        "bloomz-7b1",
    ],
)
def test_cached_prompt_scoring_equals_full_sequence_scoring(engines, key):
    engine = engines[key]
    expert = engine.experts[0]
    texts = ["short", "a much longer input text about quarterly earnings and tax rules " * 3]
    jobs = [engine.prepare(payload_for(expert, t)) for t in texts]
    rows = [ScoreRow(j.prompt_ids, j.prompt.label_ids, j.adapter_key) for j in jobs]
    assert any(len(ids) > 1 for ids in rows[0].labels) or key == "bloomz-7b1"
    cached = score_batch(
        engine.loaded.model,
        rows,
        engine.loaded.tokenizer.pad_token_id,
        use_positions=engine._use_positions,
    )
    for row, got in zip(rows, cached, strict=True):
        want = score_full(engine.loaded.model, row)
        assert got == pytest.approx(want, abs=1e-4)


def test_single_token_path_is_used_only_for_distinct_single_tokens(engines):
    for engine in engines.values():
        for spec in engine._prompts.values():
            if spec.single_token:
                assert all(len(ids) == 1 for ids in spec.label_ids)
                assert len({ids[0] for ids in spec.label_ids}) == len(spec.label_ids)
    news = engines["unsloth/mistral-7b-instruct-v0.3-bnb-4bit"]
    assert not next(iter(news._prompts.values())).single_token


def test_long_input_is_cut_in_tokens_keeping_instruction_and_cue(tiny_models):
    engine = load_engine(tiny_models, "llama-2-7b-hf", max_input_tokens=400, warmup=False)
    expert = engine.experts[0]
    text = "The bank raised its forecast. " * 400
    job = engine.prepare(payload_for(expert, text))
    assert job.truncated
    assert len(job.prompt_ids) <= 400
    prompt = engine.loaded.tokenizer.decode(job.prompt_ids, skip_special_tokens=True)
    assert prompt.rstrip().endswith("Rating:")
    assert "Rate the sentiment" in prompt
    reply = engine.run([job])[0]
    assert reply["truncated"] is True
    assert reply["input_tokens"] == len(job.prompt_ids)
    short = engine.infer(payload_for(expert, "Fine."))
    assert short["truncated"] is False


def test_esci_reads_query_and_product_from_fields_or_text(engines):
    engine = engines["llama-3.1-8b-instruct"]
    expert = REGISTRY.resolve("finance/esci", "en")
    from_text = engine.prepare(
        {
            "task": "finance/esci",
            "language": "en",
            "text": "Query: red shoes Product: running shoe, red",
        }
    )
    from_fields = engine.prepare(
        {
            "task": "esci",
            "language": "english",
            "query": "red shoes",
            "product": "running shoe, red",
        }
    )
    assert from_text.prompt_ids == from_fields.prompt_ids
    prompt = engine.loaded.tokenizer.decode(from_text.prompt_ids)
    assert "red shoes" in prompt
    assert "running shoe, red" in prompt
    assert engine.infer(payload_for(expert))["result"] in "ESCI"
    with pytest.raises(InvalidPayload) as err:
        engine.prepare({"task": "finance/esci", "language": "en", "text": "just words"})
    assert err.value.field == "query"
    assert "'query' and 'product'" in str(err.value)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("not a map", "payload"),
        ({"language": "en", "text": "x"}, "task"),
        ({"task": "finance/news", "language": "en", "text": "x"}, "task"),
        ({"task": "finance/rating", "language": "klingon", "text": "x"}, "language"),
        ({"task": "finance/rating", "language": "es", "text": "x"}, "language"),
        ({"task": "finance/rating", "text": "x"}, "language"),
        ({"task": "finance/rating", "adapter": "fin-news-en", "text": "x"}, "adapter"),
        (
            {
                "task": "finance/rating",
                "adapter": "fin-sentiment-en",
                "language": "de",
                "text": "x",
            },
            "language",
        ),
        ({"task": "finance/rating", "language": "en", "text": "   "}, "text"),
        ({"task": "finance/rating", "language": "en", "text": 5}, "text"),
        ({"task": "finance/rating", "language": "en", "text": "x", "options": [1]}, "options"),
    ],
)
def test_bad_payloads_name_the_field(engines, payload, field):
    with pytest.raises(InvalidPayload) as err:
        engines["llama-2-7b-hf"].prepare(payload)
    assert err.value.field == field
    assert err.value.code == "bad_request"
    assert field in str(err.value)


def test_pii_reply_has_json_result_and_entities(engines):
    engine = engines["mistral-7B-Instruct-v0.3"]
    expert = REGISTRY.resolve("finance/pii", "en")
    job = engine.prepare(
        payload_for(expert, "John Smith, john@x.com", options={"return_raw_response": True})
    )
    job.max_new_tokens = 8
    reply = engine.run([job])[0]
    assert isinstance(reply["raw_response"], str)
    assert reply["result"] == "[]" or reply["result"].startswith("[{")
    assert 0.0 <= reply["confidence"] <= 1.0
    assert reply["generated_tokens"] <= 8


def test_float16_on_cpu_becomes_float32_and_says_so(engines, caplog, tiny_models):
    assert engines["llama-2-7b-hf"].loaded.dtype == "float32"
    assert engines["llama-2-7b-hf"].loaded.model.dtype == torch.float32
    with caplog.at_level(logging.INFO, logger="mole.worker.engine"):
        load_engine(tiny_models, "bloomz-7b1", warmup=False)
    assert "using float32" in caplog.text
    assert "base model loaded" in caplog.text
    assert "adapter" in caplog.text


def test_missing_model_fails_naming_it(tiny_models, tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load_engine(tiny_models, "llama-2-7b-hf", models_dir=tmp_path)
    assert "llama-2-7b-hf" in str(err.value) or "meta-llama/Llama-2-7b-hf" in str(err.value)
    with pytest.raises(ModelLoadError) as err:
        load_engine(tiny_models, "no-such-model")
    assert "no-such-model" in str(err.value)


def test_missing_adapter_fails_naming_it(tiny_models, tmp_path):
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    with pytest.raises(ModelLoadError) as err:
        load_engine(tiny_models, "bloomz-7b1", adapters_dir=adapters)
    assert "finance/sentiment_analysis/bloomz-7b1" in str(err.value)
    assert "adapter_config.json" in str(err.value)


def test_generation_follows_the_registry_settings(tiny_models):
    import copy

    from mole.protocol.registry import parse_registry
    from mole.worker.engine.engine import Engine
    from tests.worker.enginehelpers import settings_for

    raw = copy.deepcopy(REGISTRY.raw)
    raw["tasks"]["finance/pii"]["generation"] = {
        "max_new_tokens": 6,
        "temperature": 0.0,
        "top_p": 1.0,
    }
    registry = parse_registry(raw, path=REGISTRY.path)
    engine = Engine.load(
        "mistral-7B-Instruct-v0.3", registry, settings_for(tiny_models, warmup=False)
    )
    expert = registry.resolve("finance/pii", "en")
    first = engine.infer(payload_for(expert, "Jane Doe lives in London."))
    again = engine.infer(
        payload_for(expert, "Jane Doe lives in London.", options={"return_raw_response": True})
    )
    assert 1 <= first["generated_tokens"] <= 6
    assert again["result"] == first["result"]  # temperature 0: greedy, deterministic


def test_length_buckets_bound_padding_and_batch_size():
    from mole.worker.engine.engine import length_buckets

    lengths = {0: 89, 1: 130, 2: 177, 3: 90, 4: 131, 5: 176, 6: 10, 7: 500}
    buckets = length_buckets(list(lengths), lengths, 16)
    assert sorted(i for b in buckets for i in b) == sorted(lengths)
    for bucket in buckets:
        longest = max(lengths[i] for i in bucket)
        assert longest * len(bucket) <= 1.25 * sum(lengths[i] for i in bucket)
    same = {i: 100 for i in range(40)}
    assert [len(b) for b in length_buckets(list(same), same, 16)] == [16, 16, 8]


@pytest.mark.parametrize(
    "key",
    [
        "unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        "bloomz-7b1",
        "facebook/xglm-7.5B",
        "qwen2.5-7b-instruct",
    ],
)
def test_cached_instruction_prefix_gives_the_same_scores(engines, tiny_models, key):
    engine = engines[key]
    plain = load_engine(tiny_models, key, prefix_cache=False, warmup=False)
    texts = ["short", "a much longer input text about quarterly earnings and tax rules " * 3]
    for expert in engine.experts[:2]:
        jobs = [engine.prepare(payload_for(expert, t)) for t in texts]
        spec = jobs[0].prompt
        assert spec.prefix_ids
        assert jobs[0].prompt_ids[: len(spec.prefix_ids)] == spec.prefix_ids
        rows = [
            ScoreRow(j.prompt_ids, j.prompt.label_ids, j.adapter_key, engine._prefix(j))
            for j in jobs
        ]
        assert all(r.prefix is not None for r in rows)
        cached = score_batch(
            engine.loaded.model,
            rows,
            engine.loaded.tokenizer.pad_token_id,
            use_positions=engine._use_positions,
        )
        for row, got in zip(rows, cached, strict=True):
            assert got == pytest.approx(score_full(engine.loaded.model, row), abs=1e-4)
        batched = engine.run(jobs)
        for job, reply in zip(jobs, batched, strict=True):
            other = plain.prepare(payload_for(expert, job.input_text))
            assert other.prompt_ids == job.prompt_ids  # the whole prompt, cache or not
            want = plain.run([other])[0]["probabilities"]
            for label, p in want.items():
                assert abs(reply["probabilities"][label] - p) < 1e-5
