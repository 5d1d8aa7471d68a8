"""A caller who knows the task or the language names it, and gating skips that step."""

from __future__ import annotations

import pytest

from mole.gating.errors import InvalidInput, TaskNotServed, UnknownTask, UnsupportedLanguage
from tests.gating.gating_samples import DESCRIPTIONS, SENTENCES

EN = SENTENCES["en"]


def test_given_language_skips_detection(pipeline, registry):
    # an English text, but the caller says German: the German expert answers
    r = pipeline.route(EN, DESCRIPTIONS["rating"], language="de")
    assert r.language.code == "de"
    assert r.expert == registry.resolve("finance/rating", "de")
    assert r.routing_path == "german(given) -> finance -> rating -> llama-2-7b-hf"
    assert r.given == ("language",)
    assert r.language_confidence == 1.0
    assert r.to_dict()["given"] == ["language"]
    # a name works as well as a code, in any case
    assert pipeline.route(EN, DESCRIPTIONS["rating"], language="German").language.code == "de"


def test_given_task_skips_domain_and_task_routing(pipeline, registry):
    r = pipeline.route(EN, task="finance/pii")
    assert r.task_key == "finance/pii"
    assert r.expert == registry.resolve("finance/pii", "en")
    assert r.routing_path == "english -> finance(given) -> pii(given) -> mistral-7B-Instruct-v0.3"
    assert r.given == ("domain", "task")
    assert r.task_scores == {}
    assert r.scope_score is None
    # a bare task name resolves through the registry too
    assert pipeline.route(EN, task="news").task_key == "finance/news"


def test_given_task_is_not_refused_whatever_the_description(pipeline):
    description = "Translate this text into French."
    with pytest.raises(TaskNotServed):
        pipeline.route(EN, description)
    r = pipeline.route(EN, description, task="rating")
    assert r.task_key == "finance/rating"


def test_both_given(pipeline):
    r = pipeline.route(SENTENCES["ja"], task="esci", language="ja")
    assert r.routing_path == (
        "japanese(given) -> finance(given) -> esci(given) -> llama-3.1-8b-instruct"
    )
    assert r.given == ("language", "domain", "task")


def test_detected_steps_are_not_marked(pipeline):
    r = pipeline.route(SENTENCES["de"], DESCRIPTIONS["rating"])
    assert r.routing_path == "german -> finance -> rating -> llama-2-7b-hf"
    assert r.given == ()
    assert r.scope_score is not None
    assert r.scope_score > pipeline.router.threshold


def test_unserved_task_names_the_served_ones(pipeline, registry):
    for bad in ("summarize", "finance/summarize", "legal/rating"):
        with pytest.raises(UnknownTask) as err:
            pipeline.route(EN, DESCRIPTIONS["rating"], task=bad)
        e = err.value
        assert e.code == "unknown_task"
        assert e.task == bad
        assert e.known == list(registry.tasks)
        for key in registry.tasks:
            assert key in e.message


def test_unserved_or_unknown_language_names_the_served_ones(pipeline, registry):
    served = [lang.name for lang in registry.languages]
    for bad, named in (("pt", "portuguese"), ("Russian", "russian"), ("klingon", "klingon")):
        with pytest.raises(UnsupportedLanguage) as err:
            pipeline.route(EN, DESCRIPTIONS["rating"], language=bad)
        e = err.value
        assert e.code == "unsupported_language"
        assert e.language == named
        assert e.served == served
        assert "english" in e.message
        assert "turkish" in e.message


def test_given_language_the_task_does_not_serve(pipeline):
    # news is not served in German: the error names the task and its languages
    with pytest.raises(UnsupportedLanguage) as err:
        pipeline.route(EN, task="news", language="de")
    assert err.value.task == "finance/news"
    assert err.value.served == ["danish", "english", "polish", "spanish", "turkish"]


def test_a_description_or_a_task_is_needed(pipeline):
    with pytest.raises(InvalidInput, match="description"):
        pipeline.route(EN)
    with pytest.raises(InvalidInput, match="description"):
        pipeline.route(EN, "   ", task="rating")
    with pytest.raises(InvalidInput, match="task"):
        pipeline.route(EN, task="  ")
