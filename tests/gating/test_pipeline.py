"""The gating pipeline end to end: every served (task, language) pair, every error path,
thread safety, and the default path importing neither torch nor transformers."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mole.gating import (
    ArtifactError,
    DomainWithoutTasks,
    GatingError,
    GatingPipeline,
    GatingResult,
    InvalidInput,
    LanguageUncertain,
    UnknownTask,
    UnsupportedLanguage,
)
from mole.gating.domain import DomainPrediction
from mole.gating.language import LanguageDetector
from mole.gating.router import QRouter
from mole.gating.settings import DEFAULT_ROUTER_DIR, load_settings
from mole.protocol.registry import DEFAULT_REGISTRY_PATH, language, parse_registry
from tests.gating.gating_samples import DESCRIPTIONS, SENTENCES

ROOT = Path(__file__).resolve().parents[2]

#: the issue's served table: task -> code -> base_model_key
TABLE = {
    "rating": {
        "en": "llama-2-7b-hf",
        "de": "llama-2-7b-hf",
        "fr": "llama-2-7b-hf",
        "es": "qwen2.5-7b-instruct",
        "ja": "qwen2.5-7b-instruct",
        "zh": "bloomz-7b1",
    },
    "pii": {c: "mistral-7B-Instruct-v0.3" for c in ("en", "nl", "fr", "de", "it", "es", "sv")},
    "news": {
        "en": "unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        "da": "unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        "es": "unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        "pl": "unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        "tr": "facebook/xglm-7.5B",
    },
    "esci": {
        "en": "llama-3.1-8b-instruct",
        "ja": "llama-3.1-8b-instruct",
        "es": "mistral-7B-Instruct-v0.3",
    },
}
PAIRS = [(task, code) for task, langs in TABLE.items() for code in langs]
UNSERVED = [(task, code) for task in TABLE for code in SENTENCES if code not in TABLE[task]]


@pytest.mark.parametrize(("task", "code"), PAIRS)
def test_every_served_pair_routes_to_its_expert(pipeline, task, code):
    result = pipeline.route(SENTENCES[code], DESCRIPTIONS[task])
    assert isinstance(result, GatingResult)
    lang = language(code)
    assert result.language == lang
    assert result.domain == "finance"
    assert (result.task, result.task_key) == (task, f"finance/{task}")
    e = result.expert
    assert e.base_model_key == TABLE[task][code]
    assert e.language == lang
    assert e.task_key == f"finance/{task}"
    assert e.adapter_name.endswith(f"-{code}")
    assert result.routing_path == f"{lang.name} -> finance -> {task} -> {e.base_model_key}"
    assert set(result.timings) == {"language_ms", "domain_ms", "task_ms", "select_ms", "total_ms"}
    assert all(v >= 0 for v in result.timings.values())
    assert 0 < result.language_confidence <= 1
    assert result.task_scores[task] == max(result.task_scores.values())


@pytest.mark.parametrize(("task", "code"), PAIRS)
def test_selection_alone_for_every_pair(pipeline, task, code):
    expert = pipeline.select(code, f"finance/{task}")
    assert expert.base_model_key == TABLE[task][code]
    assert pipeline.select(language(code).name, task) == expert


@pytest.mark.parametrize(("task", "code"), UNSERVED)
def test_a_language_the_task_does_not_serve_is_refused(pipeline, task, code):
    with pytest.raises(UnsupportedLanguage) as err:
        pipeline.route(SENTENCES[code], DESCRIPTIONS[task])
    e = err.value
    assert e.code == "unsupported_language"
    assert e.task == f"finance/{task}"
    assert e.language == language(code).name
    assert sorted(e.served) == sorted(language(c).name for c in TABLE[task])
    assert "english" in e.served  # never a silent fallback to it


def test_selection_errors(pipeline):
    with pytest.raises(UnknownTask) as err:
        pipeline.select("en", "summarise")
    assert err.value.code == "unknown_task"
    with pytest.raises(UnknownTask):
        pipeline.select("en", "finance/summarise")
    with pytest.raises(UnsupportedLanguage) as err:
        pipeline.select("klingon", "finance/rating")
    assert len(err.value.served) == 12
    with pytest.raises(UnsupportedLanguage) as err:
        pipeline.select("portuguese", "finance/rating")
    assert err.value.task == "finance/rating"


def test_routing_path_example(pipeline):
    r = pipeline.route(
        "Shares of the bank fell after weak quarterly earnings were reported.",
        "Rate the sentiment of this financial statement from 1 to 5.",
    )
    assert r.routing_path == "english -> finance -> rating -> llama-2-7b-hf"
    d = r.to_dict()
    json.dumps(d)  # JSON-able
    assert d["expert"]["label_set"] == ["1", "2", "3", "4", "5"]
    assert d["language"] == "english"
    assert d["language_code"] == "en"


@pytest.mark.parametrize(
    ("text", "description", "match"),
    [
        ("", "Rate it", "text must not be empty"),
        ("   ", "Rate it", "text must not be empty"),
        ("Some text here", "", "description must not be empty"),
        ("Some text here", " \n", "description must not be empty"),
        (None, "Rate it", "text must be a string"),
        ("Some text here", 5, "description must be a string"),
    ],
)
def test_bad_input(pipeline, text, description, match):
    with pytest.raises(InvalidInput, match=match) as err:
        pipeline.route(text, description)
    assert err.value.code == "bad_request"


def test_unsupported_and_uncertain_language(pipeline):
    with pytest.raises(UnsupportedLanguage) as err:
        pipeline.route(
            "O lucro trimestral da empresa subiu fortemente graças à procura.",
            DESCRIPTIONS["rating"],
        )
    assert err.value.language == "portuguese"
    assert err.value.task is None
    assert len(err.value.served) == 12
    body = err.value.to_dict()
    assert body["error"] == "unsupported_language"
    assert "served" in body
    with pytest.raises(LanguageUncertain) as err:
        pipeline.route("12345 67890 ---", "ok")  # fastText would say "english" (0.74)
    assert err.value.code == "language_uncertain"
    assert "no letters" in err.value.message
    # tickers say nothing of a language: without a description they are refused ...
    with pytest.raises(LanguageUncertain) as err:
        pipeline.route("AAPL MSFT GOOG TSLA NVDA", task="news")
    assert err.value.confidence < err.value.floor
    # ... and with one, its language decides
    assert pipeline.route("AAPL MSFT GOOG TSLA NVDA", DESCRIPTIONS["news"]).language.code == "en"
    detection = pipeline.detector.detect("AAPL MSFT GOOG TSLA NVDA", DESCRIPTIONS["news"])
    assert detection.used_description


class _FixedDomain:
    """Stands in for a classifier that predicts a domain the registry has no task for."""

    domains: ClassVar[list[str]] = ["finance", "general"]

    def predict(self, description, text):
        return DomainPrediction("general", 0.8, {"finance": 0.2, "general": 0.8})


def test_domain_without_tasks_is_a_typed_error(pipeline):
    p = GatingPipeline(pipeline.registry, pipeline.detector, _FixedDomain(), pipeline.router)
    with pytest.raises(DomainWithoutTasks) as err:
        p.route(SENTENCES["en"], DESCRIPTIONS["rating"])
    assert err.value.domain == "general"
    assert err.value.served_domains == ["finance"]
    assert err.value.code == "domain_without_tasks"


def test_router_must_match_the_registry(pipeline):
    raw = json.loads(DEFAULT_REGISTRY_PATH.read_text(encoding="utf-8"))
    doc = copy.deepcopy(raw)
    doc["tasks"] = {
        k: doc["tasks"][k]
        for k in ("finance/pii", "finance/rating", "finance/news", "finance/esci")
    }
    reordered = parse_registry(doc, path=DEFAULT_REGISTRY_PATH)
    with pytest.raises(ArtifactError, match="registry order"):
        GatingPipeline.load(reordered)
    doc["tasks"]["legal/contracts"] = copy.deepcopy(raw["tasks"]["finance/pii"])
    with pytest.raises(ArtifactError, match=r"domain_cls\.pt"):
        GatingPipeline.load(parse_registry(doc, path=DEFAULT_REGISTRY_PATH))


def test_stale_router_task_is_unknown(pipeline):
    router = QRouter({"finance": ["rating", "pii", "news", "esci"]})
    registry = pipeline.registry
    p = GatingPipeline(registry, pipeline.detector, pipeline.domain_classifier, router)
    router._q["finance"].tasks[0] = "summary"  # simulate a router out of step
    router._q["finance"].index = {"summary": 0}
    with pytest.raises(UnknownTask):
        p.route(SENTENCES["en"], DESCRIPTIONS["rating"])


def test_load_errors_are_typed(tmp_path):
    with pytest.raises(ArtifactError, match="mole gating train"):
        GatingPipeline.load(router=tmp_path)
    bad = tmp_path / "settings.json"
    bad.write_text('{"language": {"floor": "high"}}')
    with pytest.raises(ArtifactError, match="bad value"):
        load_settings(bad, env={})
    s = load_settings(env={"MOLE_GATING_LANGUAGE_FLOOR": "0.6", "MOLE_GATING_ROUTER": "/x/r"})
    assert s.language_floor == 0.6
    assert s.router_path == Path("/x/r")
    assert load_settings(env={}).router_path == DEFAULT_ROUTER_DIR


@pytest.mark.slow  # ~20 s of routing and retraining across threads: not in the fast lane
def test_thread_safe_routing_and_feedback(pipeline, tmp_path):
    router = QRouter.load(DEFAULT_ROUTER_DIR)
    p = GatingPipeline(pipeline.registry, pipeline.detector, pipeline.domain_classifier, router)
    jobs = [(SENTENCES[c], DESCRIPTIONS[t]) for t, c in PAIRS] * 20
    expected = [p.route(t, d).routing_path for t, d in jobs]

    def work(job):
        text, desc = job
        router.feedback("an unrelated description for online learning", "pii", 1.0)
        return p.route(text, desc).routing_path

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(work, jobs))
    assert got == expected
    assert router.feedback_count == len(jobs)


def test_pipeline_feedback_accepts_task_keys(pipeline):
    router = QRouter.load(DEFAULT_ROUTER_DIR)
    p = GatingPipeline(pipeline.registry, pipeline.detector, pipeline.domain_classifier, router)
    p.feedback("some description", "finance/esci", 1.0)
    assert router.feedback_count == 1
    with pytest.raises(GatingError):
        p.feedback("some description", "finance/unknown", 1.0)


def test_custom_detector_floor(pipeline):
    strict = LanguageDetector([x.code for x in pipeline.registry.languages], floor=0.999)
    p = GatingPipeline(pipeline.registry, strict, pipeline.domain_classifier, pipeline.router)
    with pytest.raises(LanguageUncertain):
        p.route("Die Bank.", DESCRIPTIONS["rating"])


def test_default_path_imports_neither_torch_nor_transformers():
    code = (
        "import sys\n"
        "from gating import GatingPipeline\n"
        "p = GatingPipeline.load()\n"
        "r = p.route('The bank raised its dividend again this year.', 'Rate the sentiment 1-5')\n"
        "assert r.routing_path == 'english -> finance -> rating -> llama-2-7b-hf', r\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_hostile_input_is_routed_or_refused_never_a_crash(pipeline):
    cases = [
        ("Die Bank hat ihre Gebühren erhöht \ud800 und das ist schlecht", "Rate \udfff it 1-5"),
        ("\x00\x00 Die Bank hat ihre Gebühren erhöht und das ist schlecht", "Rate it 1-5"),
        ("x" * 1_000_000, "Rate it"),
        ("Die Bank hat ihre Gebühren erhöht und das ist schlecht", "R" * 1_000_000),
        ("\u200b\u200b\u200b", "Rate"),
    ]
    for text, desc in cases:
        try:
            result = pipeline.route(text, desc)
        except GatingError as err:  # the property: routed, or refused with a code and words
            assert err.code  # noqa: PT017
            assert err.message  # noqa: PT017
        else:
            assert result.timings["total_ms"] < 1000
    ok = pipeline.route(cases[0][0], cases[0][1])
    assert ok.language.code == "de"


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=300), description=st.text(max_size=120))
def test_any_unicode_routes_or_raises_a_gating_error(pipeline, text, description):
    try:
        result = pipeline.route(text, description)
    except GatingError as err:  # the property: routed, or refused with a code and words
        assert isinstance(err.code, str)  # noqa: PT017
        assert err.message  # noqa: PT017
    else:
        assert result.expert.language == result.language
