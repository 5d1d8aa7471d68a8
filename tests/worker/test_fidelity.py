"""Real-model fidelity: the served families' real tokenizers, checked against a reference.

Every base model of the registry is built tiny on its family's real tokenizer (from
packages, see realtokenizers.py; Bloom and XGLM keep the trained BPE). The engine's label
probabilities must equal a plain transformers + peft forward pass of the whole prompt
followed by each label (tests/worker/exactness.py), batched or alone, adapters mixed in
one forward pass, with the instruction cache on or off.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from mole.worker.engine.engine import Engine, Job, label_token_ids
from mole.worker.engine.templates import Template
from tests.worker import realtokenizers
from tests.worker.enginehelpers import REGISTRY, load_engine
from tests.worker.exactness import TEXTS, Reference, max_cache_delta, payload

KEYS = list(REGISTRY.base_models)
REAL_FAMILIES = tuple(realtokenizers.BUILDERS)
#: a few inputs for the (slower) reference: a newline, a double space, CJK, Turkish İ
REFERENCE_TEXTS = {k: TEXTS[k] for k in ("de", "fr", "ja", "tr")}
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def engines(real_tokenizer_models: Path) -> dict[tuple[str, bool], Engine]:
    """(key, prefix cache on?) -> engine on the real-tokenizer models."""
    return {
        (key, cache): load_engine(real_tokenizer_models, key, prefix_cache=cache, warmup=False)
        for key in KEYS
        for cache in (True, False)
    }


def classification_experts(engine: Engine) -> list[Any]:
    return [e for e in engine.experts if e.kind == "classification"]


def render_independently(prompt: str, expert: Any, text: str) -> str:
    """The template filled by plain string replacement, whitespace collapsed."""
    values = {"input": text, "query": text[:40], "product": text, "language": ""}
    values = {k: " ".join(v.split()) for k, v in values.items()}
    values["language"] = expert.language.name
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values[m.group(1)], prompt)


def test_the_tokenizers_are_the_shipped_real_ones(engines: dict[tuple[str, bool], Engine]):
    v3 = realtokenizers.mistral_v3()
    assert len(v3) == 32768
    # the example: alone "Review" is ▁Review (9117); after a newline it is 26629
    assert v3("Review", add_special_tokens=False)["input_ids"] == [9117]
    assert 26629 in v3("Text.\nReview", add_special_tokens=False)["input_ids"]
    assert v3.convert_tokens_to_ids("[INST]") == 3
    assert len(realtokenizers.llama2_shape()) == 32000
    llama3 = realtokenizers.llama3()
    assert len(llama3) == 128256
    assert llama3("Hello")["input_ids"] == [128000, 9906]
    assert llama3.convert_tokens_to_ids("<|eot_id|>") == 128009
    qwen = realtokenizers.qwen2()
    assert qwen("Hello\n")["input_ids"] == [9707, 198]
    assert [qwen.convert_tokens_to_ids(t) for t in realtokenizers.QWEN2_SPECIALS] == [
        151643,
        151644,
        151645,
    ]
    sizes = {"llama2": 32000, "mistral": 32768, "llama3": 128256, "qwen2": 151646}
    for (key, _), engine in engines.items():
        family = REGISTRY.base_models[key].family
        if family in sizes:
            assert len(engine.loaded.tokenizer) == sizes[family], key
            assert engine.loaded.model.get_base_model().config.vocab_size == sizes[family]


@pytest.mark.parametrize("key", KEYS)
def test_every_prompt_is_the_whole_prompt_tokenisation(engines, key):
    for cache in (True, False):
        engine = engines[(key, cache)]
        tok = engine.loaded.tokenizer
        for expert in engine.experts:
            for text in TEXTS.values():
                job = engine.prepare(payload(expert, text))
                want = render_independently(job.prompt.template.prompt, expert, text)
                assert job.prompt_text == want
                assert job.prompt_ids == tok(want)["input_ids"]


@pytest.mark.parametrize("key", KEYS)
def test_cache_on_and_off_give_the_same_probabilities(engines, key):
    cached, plain = engines[(key, True)], engines[(key, False)]
    for expert in classification_experts(cached):
        spec = cached.prepare(payload(expert, "x")).prompt
        assert len(spec.prefix_ids) > 10  # the instruction is cached...
        for text in TEXTS.values():  # ...and every request uses it
            assert cached._prefix(cached.prepare(payload(expert, text))) is not None
    assert max_cache_delta(cached, plain) < TOLERANCE


def _reference_for(root: Path, key: str) -> Reference:
    return Reference(root / "models" / key)


def _assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for label, p in want.items():
        assert abs(got[label] - p) < TOLERANCE, (label, got, want)


@pytest.mark.parametrize("key", KEYS)
def test_probabilities_equal_a_plain_transformers_peft_reference(
    engines, real_tokenizer_models, key
):
    experts = classification_experts(engines[(key, True)])
    assert experts  # every base model of the registry serves a classification task
    reference = _reference_for(real_tokenizer_models, key)
    adapters = real_tokenizer_models / "adapters"
    want: dict[tuple[str, str], dict[str, float]] = {}
    for expert in experts:
        for lang, text in REFERENCE_TEXTS.items():
            job = engines[(key, False)].prepare(payload(expert, text))
            want[(expert.adapter_name, lang)] = reference.probabilities(
                adapters / expert.adapter_path,
                job.prompt_text,
                job.prompt.template.answer_prefix,
                expert.label_set,
            )
    for cache in (True, False):
        engine = engines[(key, cache)]
        jobs: list[Job] = []
        keys: list[tuple[str, str]] = []
        for expert in experts:
            for lang, text in REFERENCE_TEXTS.items():
                jobs.append(engine.prepare(payload(expert, text)))
                keys.append((expert.adapter_name, lang))
        # every adapter (and task) of this model in one forward pass
        mixed = engine._classify(jobs)
        # through run(): length buckets and the batching a worker does
        batched = engine.run(jobs)
        for i, k in enumerate(keys):
            _assert_close(mixed[i]["probabilities"], want[k])
            _assert_close(batched[i]["probabilities"], want[k])
        for job, k in zip(jobs[:3], keys[:3], strict=True):  # alone
            _assert_close(engine.run([job])[0]["probabilities"], want[k])


@pytest.mark.parametrize("key", KEYS)
def test_label_tokens_are_what_follows_the_prompt_in_the_whole_text(engines, key):
    engine = engines[(key, True)]
    tok = engine.loaded.tokenizer
    for expert in classification_experts(engine):
        for text in TEXTS.values():
            job = engine.prepare(payload(expert, text))
            for label, label_ids in zip(expert.label_set, job.prompt.label_ids, strict=True):
                whole = tok(job.prompt_text + job.prompt.template.answer_prefix + label)
                assert whole["input_ids"] == job.prompt_ids + label_ids, (key, label)


@pytest.mark.slow  # builds each family's real tokenizer (seconds each)
@pytest.mark.parametrize("family", REAL_FAMILIES)
@pytest.mark.parametrize(
    ("prompt", "answer_prefix", "labels"),
    [
        ("评论：{{input}}\n评分：", "", ("1", "2", "3", "4", "5")),  # full-width colon, no space
        ("レビュー：{{input}}\n分類：", "", ("肯定", "否定", "中立")),
        ("Review: {{input}}\nRating:", " ", ("1", "5")),
        ("News: {{input}}\nCategory:", " ", ("Tax & Accounting", "Finance")),
    ],
)
def test_cue_to_label_boundary_per_family(family, prompt, answer_prefix, labels):
    tok = realtokenizers.BUILDERS[family]()
    template = Template(prompt, answer_prefix)
    ids = label_token_ids(tok, template, labels)
    for text in ("客户服务很差。", "Fine.", "手数料が高い"):
        rendered = template.render({"input": text})
        prompt_ids = tok(rendered)["input_ids"]
        for label, label_ids in zip(labels, ids, strict=True):
            assert tok(rendered + answer_prefix + label)["input_ids"] == prompt_ids + label_ids


@pytest.fixture(scope="module")
def split_adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """llama-2's rating experts with one adapter directory per language (the registry
    shares one), so one forward pass really mixes three adapters."""
    from mole.protocol.registry import parse_registry
    from mole.worker.tiny import generate

    raw = copy.deepcopy(REGISTRY.raw)
    mapping = raw["tasks"]["finance/rating"]["language_mapping"]
    for name in ("german", "french"):
        mapping[name]["adapter_path"] += f"-{name}"
    registry = parse_registry(raw, path=REGISTRY.path)
    out = tmp_path_factory.mktemp("split_adapters")
    generate(
        out,
        registry=registry,
        keys=["llama-2-7b-hf"],
        size="narrow",
        tokenizers={"llama2": realtokenizers.llama2_shape()},
    )
    return out, registry


def test_mixed_adapters_in_one_forward_pass_equal_the_reference(split_adapters):
    from tests.worker.enginehelpers import settings_for

    root, registry = split_adapters
    key = "llama-2-7b-hf"
    experts = registry.experts_for_base_model(key)
    assert len({e.adapter_path for e in experts}) == 3
    reference = _reference_for(root, key)
    for cache in (True, False):
        engine = Engine.load(key, registry, settings_for(root, prefix_cache=cache, warmup=False))
        jobs = [engine.prepare(payload(e, t)) for t in REFERENCE_TEXTS.values() for e in experts]
        assert len({j.adapter_key for j in jobs}) == 3
        wants = [
            reference.probabilities(
                root / "adapters" / j.expert.adapter_path,
                j.prompt_text,
                j.prompt.template.answer_prefix,
                j.expert.label_set,
            )
            for j in jobs
        ]
        # the adapters disagree, so a batch that ignored or swapped them would fail
        assert max(abs(wants[0][k] - wants[1][k]) for k in wants[0]) > 1e-3
        for reply, want in zip(engine._classify(jobs), wants, strict=True):
            _assert_close(reply["probabilities"], want)
