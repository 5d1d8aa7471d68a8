"""The pipeline remembers each description's route, and forgets it when the router learns.

Real parts: the shipped registry, language detector and router (a fresh copy of the
router per test, loaded from its directory, since feedback changes it). The one stand-in
is a QRouter subclass that counts its ``route`` calls and then does exactly what QRouter
does, so a test can tell a remembered answer from a recomputed one.
"""

from __future__ import annotations

import threading

import pytest

from mole.gating import GatingPipeline
from mole.gating.pipeline import DescriptionRoutes
from mole.gating.router import QRouter, Route
from mole.gating.settings import DEFAULT_ROUTER_DIR
from tests.gating.gating_samples import DESCRIPTIONS, SENTENCES

#: the languages the registry serves the rating task in
RATING_LANGUAGES = ("en", "de", "fr", "es", "ja", "zh")


class CountingRouter(QRouter):
    """The shipped router, counting how often it is asked to route."""

    calls = 0

    def route(self, description: str, domain: str | None = None) -> Route:
        self.calls += 1
        return super().route(description, domain)


@pytest.fixture
def fresh(pipeline) -> tuple[GatingPipeline, CountingRouter]:
    """A pipeline over the shared detector and a router of its own (feedback changes it)."""
    router = CountingRouter.load(DEFAULT_ROUTER_DIR)
    assert isinstance(router, CountingRouter)
    p = GatingPipeline(pipeline.registry, pipeline.detector, pipeline.domain_classifier, router)
    return p, router


def test_many_texts_under_one_description_ask_the_router_once(fresh):
    p, router = fresh
    answers = [p.route(SENTENCES[code], DESCRIPTIONS["rating"]) for code in RATING_LANGUAGES]
    assert router.calls == 1
    # each text still gets its own language: nothing per text is remembered
    assert [a.language.code for a in answers] == list(RATING_LANGUAGES)
    assert {a.task for a in answers} == {"rating"}
    p.route(SENTENCES["en"], DESCRIPTIONS["news"])
    assert router.calls == 2


def test_a_feedback_update_is_seen_by_the_next_request(fresh):
    p, router = fresh
    description = DESCRIPTIONS["rating"]
    assert p.route(SENTENCES["en"], description).task == "rating"
    assert p.route(SENTENCES["de"], description).task == "rating"  # remembered
    assert router.calls == 1
    # the same learning, once through the pipeline, flips the answer (measured: twice)
    for _ in range(2):
        p.feedback(description, "news", 1.0)
        p.feedback(description, "finance/rating", 0.0)
    after = p.route(SENTENCES["en"], description)
    assert router.calls == 2
    assert after.task == "news"
    # the reference: what the router itself now says
    assert after.task_scores == router.route(description, "finance").q_values


def test_out_of_scope_feedback_forgets_the_remembered_routes(fresh):
    p, router = fresh
    p.route(SENTENCES["en"], DESCRIPTIONS["rating"])
    assert len(p.routes) == 1
    p.feedback_out_of_scope("Write a poem about the sea in the style of a pirate.")
    assert len(p.routes) == 0
    p.route(SENTENCES["en"], DESCRIPTIONS["rating"])
    assert router.calls == 2


def test_a_new_router_is_asked_afresh(fresh, pipeline):
    p, router = fresh
    p.route(SENTENCES["en"], DESCRIPTIONS["rating"])
    other = CountingRouter.load(DEFAULT_ROUTER_DIR)
    p.router = other
    p.route(SENTENCES["en"], DESCRIPTIONS["rating"])
    assert (router.calls, other.calls) == (1, 1)


def test_callers_cannot_change_a_remembered_answer(fresh):
    p, _ = fresh
    first = p.route(SENTENCES["en"], DESCRIPTIONS["rating"])
    first.task_scores["rating"] = -99.0
    first.domain_probabilities["finance"] = -1.0
    second = p.route(SENTENCES["en"], DESCRIPTIONS["rating"])
    assert second.task_scores["rating"] != -99.0
    assert second.domain_probabilities == {"finance": 1.0}


def _route(task: str) -> Route:
    return Route("finance", task, {task: 1.0})


def test_the_cache_is_bounded_least_recently_used_first():
    routes = DescriptionRoutes(size=2)
    routes.put(("a", "finance"), _route("rating"), routes.generation)
    routes.put(("b", "finance"), _route("news"), routes.generation)
    assert routes.get(("a", "finance")) is not None  # a is now the most recent
    routes.put(("c", "finance"), _route("pii"), routes.generation)
    assert len(routes) == 2
    assert routes.get(("b", "finance")) is None
    assert routes.get(("a", "finance")).task == "rating"
    assert routes.get(("c", "finance")).task == "pii"
    with pytest.raises(ValueError, match="at least 1"):
        DescriptionRoutes(size=0)


def test_an_answer_worked_out_across_a_clear_is_not_stored():
    routes = DescriptionRoutes()
    generation = routes.generation  # read before asking the (old) router
    routes.clear()  # the router learned meanwhile
    routes.put(("a", "finance"), _route("rating"), generation)
    assert routes.get(("a", "finance")) is None
    routes.put(("a", "finance"), _route("news"), routes.generation)
    assert routes.get(("a", "finance")).task == "news"


def test_routing_and_feedback_from_threads_end_with_the_router_answer(fresh):
    p, router = fresh
    description = DESCRIPTIONS["rating"]
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for code in ("en", "es") * 15:  # served by rating and news alike
                p.route(SENTENCES[code], description)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(3):
        p.feedback(description, "news", 1.0)
        p.feedback(description, "rating", 0.0)
    for t in threads:
        t.join()
    assert errors == []
    assert p.route(SENTENCES["en"], description).task_scores == (
        router.route(description, "finance").q_values
    )
