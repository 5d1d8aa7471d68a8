"""Explicit task and language, refusal of unserved tasks and unknown fields, through the
real app with real gating, a real broker and fixed-answer worker processes."""

from __future__ import annotations

import pytest

EN = "The quarterly revenue rose 12 percent and the company raised its full-year outlook."
DE = "Der Quartalsumsatz stieg um zwölf Prozent und die Prognose wurde angehoben."
RATE = "Rate the sentiment of this financial statement"


def classify(api, **body):
    return api.client.simulate_post("/api/v1/classify", json=body, headers=api.user())


def test_a_given_task_skips_task_routing_and_needs_no_description(api):
    r = classify(api, text=EN, task="finance/news")
    assert r.status_code == 200, r.text
    expert = api.components.gating.registry.resolve("finance/news", "en")
    assert r.json["task"] == "news"
    assert r.json["routing_path"] == (
        f"english -> finance(given) -> news(given) -> {expert.base_model_key}"
    )
    assert set(r.json["given"]) == {"domain", "task"}
    short = classify(api, text=EN, task="news")
    assert short.status_code == 200, short.text
    assert short.json["routing_path"] == r.json["routing_path"]


def test_a_given_language_skips_detection(api):
    # German text declared English: the caller's word wins, and the path says it was given
    r = classify(api, text=DE, description=RATE, task="rating", language="en")
    assert r.status_code == 200, r.text
    assert r.json["language"] == "english"
    assert r.json["routing_path"].startswith("english(given) -> ")
    assert "language" in r.json["given"]
    by_name = classify(api, text=DE, task="rating", language="German")
    assert by_name.status_code == 200, by_name.text
    assert by_name.json["language"] == "german"


@pytest.mark.parametrize(
    ("body", "code", "field", "named"),
    [
        ({"task": "summarize"}, "unknown_task", "task", "finance/rating"),
        ({"task": "rating", "language": "xx"}, "unsupported_language", "language", "german"),
        ({"task": "rating", "language": "  "}, "validation_error", "language", "detect"),
    ],
)
def test_unserved_choices_are_refused_naming_what_is_served(api, body, code, field, named):
    r = classify(api, text=EN, **body)
    assert r.status_code == 422, r.text
    assert r.json["error"] == code
    assert r.json["field"] == field
    assert named in r.json["detail"] or named in r.text


def test_an_unserved_task_description_is_refused_with_its_own_code(api):
    r = classify(api, text=EN, description="Summarize this text in three sentences")
    assert r.status_code == 422, r.text
    assert r.json["error"] == "task_not_served"
    assert r.json["field"] == "description"
    assert "finance/rating" in r.json["served"]
    assert "candidates" not in r.json
    asked = classify(
        api,
        text=EN,
        description="Translate this text to French",
        options={"return_candidates": True},
    )
    assert asked.status_code == 422, asked.text
    assert asked.json["error"] == "task_not_served"
    candidates = asked.json["candidates"]
    assert [c["task"] for c in candidates][:1]
    assert all("q" in c for c in candidates)
    assert {c["task"] for c in candidates} <= set(asked.json["served"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "gpt-4"}, "model"),
        ({"langauge": "de"}, "langauge"),
        ({"options": {"return_probabilites": True}}, "options.return_probabilites"),
    ],
)
def test_unknown_fields_are_named_in_a_422(api, body, field):
    r = classify(api, text=EN, description=RATE, **body)
    assert r.status_code == 422, r.text
    assert r.json["error"] == "validation_error"
    assert r.json["field"] == field
    assert repr(field.rsplit(".", 1)[-1]) in r.json["detail"]


def test_description_is_still_required_without_a_task(api):
    r = classify(api, text=EN)
    assert r.status_code == 422, r.text
    assert r.json["field"] == "description"


def test_a_batch_item_with_an_unknown_field_fails_alone(api):
    r = api.client.simulate_post(
        "/api/v1/classify/batch",
        json={"items": [{"text": EN, "task": "rating"}, {"text": EN, "task": "rating", "x": 1}]},
        headers=api.user(),
    )
    assert r.status_code == 200, r.text
    first, second = r.json["results"]
    assert first["ok"] is True
    assert second["ok"] is False
    assert second["error"] == "validation_error"
    assert second["field"] == "items[1].x"
