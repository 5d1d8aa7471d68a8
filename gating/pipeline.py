"""The gating pipeline: text + task description -> language, domain, task, expert.

Stages (each timed): language of the text (fastText, served languages only), domain
(no model when the registry has one), task (Q-learning router over the description),
expert selection (the registry). A caller who knows the language or the task names it
and that step is skipped. A description no served task fits is refused
(:class:`gating.errors.TaskNotServed`) rather than sent to the least-bad expert. Every
failure is a :class:`gating.errors.GatingError` with a ``code``; nothing falls back
silently. ``route`` is thread-safe: the components guard their own state, and the
pipeline keeps none per request.

Clients send one task description with many texts, so what depends on the description
alone is worked out once per description, not once per request: the router's answer
(task, Q-values, scope) is remembered per ``(description, domain)`` in a bounded LRU
(:class:`DescriptionRoutes`) that a router update made through the pipeline
(``feedback``, ``feedback_out_of_scope``, a new ``router``) empties, and a registry
reload builds a new pipeline with an empty one. What depends on the registry alone (the
expert and routing path of a language, domain and task; a one-domain registry's domain
prediction) is worked out once per pipeline. Nothing is remembered per text: the text's
language is detected on every request (the detector remembers only descriptions'
languages, which short texts lean on).

Usage as a library::

    from mole.gating import GatingPipeline
    gating = GatingPipeline.load()
    result = gating.route(text, description)
    result.routing_path   # "english -> finance -> rating -> llama-2-7b-hf"
    gating.route(text, task="rating", language="de").routing_path
    # "german(given) -> finance(given) -> rating(given) -> llama-2-7b-hf"
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mole.gating.domain import DomainPrediction, SingleDomain, check_domain
from mole.gating.errors import (
    ArtifactError,
    GatingError,
    InvalidInput,
    TaskNotServed,
    UnknownTask,
    UnsupportedLanguage,
)
from mole.gating.language import Detection, LanguageDetector
from mole.gating.router import QRouter, Route
from mole.gating.scope import ThresholdChoice
from mole.gating.selector import ExpertSelector
from mole.gating.settings import GatingSettings, load_settings
from mole.protocol.registry import (
    ExpertSpec,
    ExpertsRegistry,
    Language,
    TaskSpec,
    UnknownExpert,
    load_registry,
)
from mole.protocol.registry import language as registry_language

#: language detection reads a text's first this many characters (the expert still gets
#: the whole text). fastText's cost grows with the text: measured with
#: tests/benchmarks/bench_detect_length.py (360 texts of 1,500-6,000 characters in the 12
#: served languages), 400 us a text at 1,000 characters against 1,300 us at 4,000, and
#: every cut from 300 up read all 360 as their own language and as the uncut text did;
#: 1,000 (a paragraph or two) keeps a margin over that for texts that open with a
#: heading, a name or a number
MAX_DETECT_CHARS = 1000
#: distinct (description, domain) pairs whose route is remembered: a client sends a
#: handful of descriptions, a deployment some hundreds; beyond that the oldest go
DESCRIPTION_CACHE_SIZE = 4096


class TaskRouter(Protocol):
    # read-only: both routers expose a fresh copy through a property
    @property
    def domains(self) -> dict[str, list[str]]: ...

    def route(self, description: str, domain: str | None = None) -> Route: ...

    def feedback(
        self, description: str, task: str, reward: float, domain: str | None = None
    ) -> float: ...

    def feedback_out_of_scope(self, description: str) -> ThresholdChoice | None: ...

    def save(self, directory: str | os.PathLike[str] | None = None) -> Path: ...


class DomainClassifier(Protocol):
    domains: list[str]

    def predict(self, description: str, text: str) -> DomainPrediction: ...


@dataclass(frozen=True, slots=True)
class GatingResult:
    """Where a request goes and why."""

    language: Language
    language_confidence: float
    domain: str
    domain_confidence: float
    task: str  # "rating"
    task_key: str  # "finance/rating"
    expert: ExpertSpec
    routing_path: str
    timings: dict[str, float]
    domain_probabilities: dict[str, float] = field(default_factory=dict)
    task_scores: dict[str, float] = field(default_factory=dict)  # empty when task was given
    #: the steps the caller named instead of gating: "language", "domain", "task"
    given: tuple[str, ...] = ()
    #: the description's scope score (None when the task was given or the router has none)
    scope_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        e = self.expert
        return {
            "language": self.language.name,
            "language_code": self.language.code,
            "language_confidence": round(self.language_confidence, 4),
            "domain": self.domain,
            "domain_confidence": round(self.domain_confidence, 4),
            "domain_probabilities": self.domain_probabilities,
            "task": self.task,
            "task_key": self.task_key,
            "task_scores": {k: round(v, 4) for k, v in self.task_scores.items()},
            "expert": {
                "base_model_key": e.base_model_key,
                "adapter_name": e.adapter_name,
                "adapter_path": e.adapter_path,
                "template_path": str(e.template_path),
                "label_set": list(e.label_set),
                "generation": e.generation,
                "kind": e.kind,
            },
            "routing_path": self.routing_path,
            "given": list(self.given),
            "scope_score": round(self.scope_score, 4) if self.scope_score is not None else None,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


class DescriptionRoutes:
    """The router's answer per ``(description, domain)``: a bounded LRU, thread-safe.

    Why: the router's answer depends on the description alone, and clients send the same
    description with every text. ``clear`` forgets everything; a route worked out while
    a ``clear`` happened is not stored (it may be the old router's answer), so after
    ``clear`` returns no answer of the router before it is ever served.
    """

    def __init__(self, size: int = DESCRIPTION_CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = size
        self._routes: OrderedDict[tuple[str, str], Route] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0

    def __len__(self) -> int:
        return len(self._routes)

    def get(self, key: tuple[str, str]) -> Route | None:
        with self._lock:
            route = self._routes.get(key)
            if route is not None:
                self._routes.move_to_end(key)
            return route

    @property
    def generation(self) -> int:
        """Read before asking the router; pass to :meth:`put` with its answer."""
        return self._generation

    def put(self, key: tuple[str, str], route: Route, generation: int) -> None:
        with self._lock:
            if generation != self._generation:  # cleared meanwhile: maybe a stale answer
                return
            self._routes[key] = route
            if len(self._routes) > self.size:
                self._routes.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._routes.clear()


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInput(f"{name} must not be empty")
    return value


class GatingPipeline:
    """Language -> domain -> task -> expert. Build it with :meth:`load`."""

    def __init__(
        self,
        registry: ExpertsRegistry,
        detector: LanguageDetector,
        domain_classifier: DomainClassifier,
        router: TaskRouter,
    ) -> None:
        self.registry = registry
        self.detector = detector
        self.domain_classifier = domain_classifier
        self.routes = DescriptionRoutes()
        self._router = router
        self.selector = ExpertSelector(registry)
        # worked out once per registry (a reload builds a new pipeline)
        self._served_domains = list(registry.domains)
        self._served_tasks = list(registry.tasks)
        #: (language code, domain, task, given steps) -> (expert, routing path)
        self._selections: dict[tuple[str, str, str, tuple[str, ...]], tuple[ExpertSpec, str]] = {}
        #: a one-domain registry's (constant) domain prediction; None: ask the classifier
        self._single_domain: DomainPrediction | None = None
        if isinstance(domain_classifier, SingleDomain):
            self._single_domain = domain_classifier.predict("", "")
            check_domain(self._single_domain, self._served_domains)
        self._check_router()
        unknown = [d for d in registry.domains if d not in domain_classifier.domains]
        if unknown:
            raise ArtifactError(
                f"the domain classifier cannot predict {', '.join(unknown)} (its domains: "
                f"{', '.join(domain_classifier.domains)}), so those tasks would be "
                "unreachable; retrain it with `mole gating train-domain`"
            )

    @property
    def router(self) -> TaskRouter:
        return self._router

    @router.setter
    def router(self, router: TaskRouter) -> None:
        """A new router: the remembered routes were the old one's."""
        self._router = router
        self.routes.clear()

    def _check_router(self) -> None:
        """The router's actions must be each domain's tasks in registry order."""
        for domain in self.registry.domains:
            tasks = [t.name for t in self.registry.tasks_of_domain(domain)]
            have = self.router.domains.get(domain)
            if have is None:
                raise ArtifactError(
                    f"the task router has no domain {domain!r} (it has "
                    f"{', '.join(self.router.domains) or 'none'}); retrain it with "
                    "`mole gating train`"
                )
            if list(have) != tasks:
                raise ArtifactError(
                    f"the task router's actions for {domain!r} are {have}, but the registry's "
                    f"tasks are {tasks} (registry order); retrain it with `mole gating train`"
                )

    @classmethod
    def load(
        cls,
        registry: ExpertsRegistry | str | os.PathLike[str] | None = None,
        *,
        settings: GatingSettings | None = None,
        router: TaskRouter | str | os.PathLike[str] | None = None,
        detector: LanguageDetector | None = None,
        domain_classifier: DomainClassifier | None = None,
    ) -> GatingPipeline:
        """Build the pipeline from the registry and the gating settings.

        Args:
            registry: an ExpertsRegistry, a path to one, or None for the default
                (``EXPERT_REGISTRY_PATH`` or configs/experts_registry.json).
            settings: default ``configs/gating/settings.json`` + ``MOLE_GATING_*``.
            router: a router object or a router directory; default from settings (the
                encoder router when ``encoder_router.dir`` is set, else the hashed one).
            detector, domain_classifier: override the defaults (tests, embedding).

        Raises:
            RegistryError, ArtifactError: a file is missing or invalid (nothing is
                degraded silently).
        """
        if not isinstance(registry, ExpertsRegistry):
            registry = load_registry(registry)
        settings = settings or load_settings()
        if detector is None:
            detector = LanguageDetector(
                [lang.code for lang in registry.languages],
                model_path=settings.language_model_path,
                floor=settings.language_floor,
                top_k=settings.language_top_k,
                short_chars=settings.language_short_chars,
                description_weight=settings.language_description_weight,
                second_opinion=settings.language_short_text_model == "lingua",
            )
        if domain_classifier is None:
            domains = registry.domains
            if len(domains) == 1:
                domain_classifier = SingleDomain(domains[0])
            elif settings.domain_model_dir is None:
                raise ArtifactError(
                    f"the registry has {len(domains)} domains ({', '.join(domains)}): set "
                    "domain.model_dir in the gating settings (or MOLE_GATING_DOMAIN_DIR) to a "
                    "directory with domain_cls.pt"
                )
            else:
                from mole.gating.domain import XLMRDomainClassifier

                domain_classifier = XLMRDomainClassifier.load(
                    settings.domain_model_dir, encoder_dir=settings.encoder_dir
                )
        task_router: TaskRouter
        if router is None and settings.encoder_router_dir is not None:
            from mole.gating.encoder_router import EncoderQRouter

            task_router = EncoderQRouter.load(
                settings.encoder_router_dir,
                {d: [t.name for t in registry.tasks_of_domain(d)] for d in registry.domains},
                encoder_dir=settings.encoder_dir,
            )
        elif router is None or isinstance(router, str | os.PathLike):
            task_router = QRouter.load(router if router is not None else settings.router_path)
        else:
            task_router = router
        pipeline = cls(registry, detector, domain_classifier, task_router)
        pipeline.warm_up()
        return pipeline

    def warm_up(self) -> None:
        """One throw-away pass per stage, so the first real request does not pay for page
        faults and lazy initialisation (measured: ~6 ms cold vs ~0.1 ms warm)."""
        with contextlib.suppress(GatingError):
            self.detector.detect("The quarterly report shows higher profits this year.")
        for domain, tasks in self.router.domains.items():
            if tasks:
                self.router.route("Rate the sentiment of this text.", domain)

    # -- stages ------------------------------------------------------------------------
    def detect_language(self, text: str, description: str | None = None) -> Detection:
        return self.detector.detect(text[:MAX_DETECT_CHARS], description)

    def classify_domain(self, description: str, text: str) -> DomainPrediction:
        if self._single_domain is not None:  # a one-domain registry: no model to ask
            return self._single_domain  # frozen; ``route`` copies its probabilities
        pred = self.domain_classifier.predict(description, text)
        check_domain(pred, self._served_domains)
        return pred

    def _route_description(self, description: str, domain: str) -> Route:
        """The router's answer for ``description`` in ``domain``, remembered (see
        :class:`DescriptionRoutes`). Shared between requests: never change its
        ``q_values`` (``route`` hands callers a copy)."""
        key = (description, domain)
        route = self.routes.get(key)
        if route is None:
            generation = self.routes.generation
            route = self._router.route(description, domain)
            self.routes.put(key, route, generation)
        return route

    def route(
        self,
        text: str,
        description: str | None = None,
        *,
        task: str | None = None,
        language: str | None = None,
        candidates: bool = False,
    ) -> GatingResult:
        """Route one request. Thread-safe.

        Args:
            text: the text the expert will read.
            description: what the caller wants done; required unless ``task`` is given
                (it is also the evidence for the language of a very short text).
            task: skip domain and task routing: a task name (``rating``) or key
                (``finance/rating``) the registry serves.
            language: skip language detection: an ISO code or a name (``de``, ``german``).
            candidates: on a refusal, put the router's tasks and their Q-values in the
                error (``TaskNotServed.candidates``), best first.

        The routing path names each step; a step the caller gave is suffixed
        ``(given)`` (a domain implied by a given task counts as given):
        ``german(given) -> finance(given) -> rating(given) -> llama-2-7b-hf``.

        Raises:
            InvalidInput: empty or non-string text/description, or neither a description
                nor a task.
            UnsupportedLanguage: a given language the registry (or the task) does not
                serve, or a detected one; LanguageUncertain: see :mod:`gating.language`.
            UnknownTask: a given task the registry does not serve (``.known`` lists the
                served task keys), or a stale router's task.
            TaskNotServed: the router found no served task that fits the description.
            DomainWithoutTasks: the domain classifier chose a domain without tasks.
        """
        _check_text("text", text)
        if description is not None or task is None:
            _check_text("description", description)
        given: list[str] = []
        t0 = time.perf_counter()
        if language is not None:
            lang, lang_confidence = self._given_language(language), 1.0
            given.append("language")
        else:
            detection = self.detect_language(text, description)
            lang, lang_confidence = detection.language, detection.confidence
        t1 = time.perf_counter()
        route: Route | None = None
        if task is not None:
            spec = self._given_task(task)
            domain, task_name = spec.domain, spec.name
            dom = DomainPrediction(domain, 1.0, {domain: 1.0})
            given += ["domain", "task"]
            t2 = t3 = time.perf_counter()
        else:
            assert description is not None  # checked above
            dom = self.classify_domain(description, text)
            t2 = time.perf_counter()
            route = self._route_description(description, dom.domain)
            t3 = time.perf_counter()
            if route.refused:
                raise self._refusal(route, candidates)
            domain, task_name = dom.domain, route.task
        expert, path = self._selection(lang, domain, task_name, tuple(given))
        t4 = time.perf_counter()
        return GatingResult(
            language=lang,
            language_confidence=lang_confidence,
            domain=domain,
            domain_confidence=dom.confidence,
            task=task_name,
            task_key=f"{domain}/{task_name}",
            expert=expert,
            routing_path=path,
            timings={
                "language_ms": (t1 - t0) * 1e3,
                "domain_ms": (t2 - t1) * 1e3,
                "task_ms": (t3 - t2) * 1e3,
                "select_ms": (t4 - t3) * 1e3,
                "total_ms": (t4 - t0) * 1e3,
            },
            domain_probabilities=dict(dom.probabilities),
            task_scores=dict(route.q_values) if route is not None else {},
            given=tuple(given),
            scope_score=route.scope if route is not None else None,
        )

    def _selection(
        self, lang: Language, domain: str, task: str, given: tuple[str, ...]
    ) -> tuple[ExpertSpec, str]:
        """The expert and routing path of a (language, domain, task), once per registry:
        the registry does not change under a pipeline. Errors are not remembered."""
        key = (lang.code, domain, task, given)
        known = self._selections.get(key)
        if known is not None:
            return known
        expert = self.selector.select(lang, domain, task)

        def step(name: str, kind: str) -> str:
            return f"{name}(given)" if kind in given else name

        path = " -> ".join(
            (
                step(lang.name, "language"),
                step(domain, "domain"),
                step(task, "task"),
                expert.base_model_key,
            )
        )
        self._selections[key] = (expert, path)  # one dict store: atomic, no lock needed
        return expert, path

    def served_tasks(self) -> list[str]:
        """The registry's task keys (``finance/rating``), in registry order."""
        return list(self._served_tasks)

    def _given_language(self, value: str) -> Language:
        served = [lang.name for lang in self.registry.languages]
        try:
            lang = registry_language(value)
        except KeyError:
            raise UnsupportedLanguage(
                f"unknown language {value!r}; give one of the served languages by name or "
                f"ISO code: {', '.join(served)}",
                language=str(value),
                served=served,
            ) from None
        if lang.name not in served:
            raise UnsupportedLanguage(
                f"{lang.name} is not served; served languages: {', '.join(served)}",
                language=lang.name,
                served=served,
            )
        return lang

    def _given_task(self, value: str) -> TaskSpec:
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput("task must be a non-empty string (e.g. rating or finance/rating)")
        try:
            return self.registry.task(value.strip())
        except UnknownExpert as err:
            served = self.served_tasks()
            raise UnknownTask(
                f"{err}; the task is a served task's name or key: {', '.join(served)}",
                task=value,
                known=served,
            ) from None

    def _refusal(self, route: Route, candidates: bool) -> TaskNotServed:
        served = self.served_tasks()
        offered = "; ".join(f"{k} ({self.registry.tasks[k].description})" for k in served)
        assert route.scope is not None
        assert route.threshold is not None
        ranked = sorted(route.q_values.items(), key=lambda kv: kv[1], reverse=True)
        return TaskNotServed(
            "no served task fits this description (its scope score "
            f"{route.scope:.3f} is under the threshold {route.threshold:.3f}); this "
            f"service offers: {offered}. Name one with the task field, or describe the "
            "task in other words",
            served=served,
            score=round(route.scope, 4),
            threshold=round(route.threshold, 4),
            candidates=[{"task": f"{route.domain}/{t}", "q": round(q, 4)} for t, q in ranked]
            if candidates
            else None,
        )

    def select(self, language_name_or_code: str, task_key: str) -> ExpertSpec:
        """Selection alone, for callers that already know the language and task."""
        from mole.protocol.registry import language

        try:
            lang = language(language_name_or_code)
        except KeyError:
            served = [lang.name for lang in self.registry.languages]
            raise UnsupportedLanguage(
                f"unknown language {language_name_or_code!r}; served: {', '.join(served)}",
                language=language_name_or_code,
                served=served,
            ) from None
        domain, _, task = task_key.rpartition("/")
        if not domain:
            try:
                domain = self.registry.task(task_key).domain
            except UnknownExpert as err:
                raise UnknownTask(str(err), task=task_key, known=list(self.registry.tasks)) from err
        return self.selector.select(lang, domain, task)

    # -- online learning ---------------------------------------------------------------
    def feedback(
        self, description: str, task: str, reward: float, domain: str | None = None
    ) -> float:
        """Reward the router for routing ``description`` to ``task`` (1 right, 0 wrong).

        Router updates go through here (not ``pipeline.router.feedback``): the pipeline
        then forgets the routes it remembered."""
        _check_text("description", description)
        if "/" in task:
            domain, task = task.split("/", 1)
        try:
            return self._router.feedback(description, task, reward, domain)
        finally:
            self.routes.clear()

    def feedback_out_of_scope(self, description: str) -> ThresholdChoice | None:
        """Teach the router that no served task fits ``description``; returns the refusal
        threshold chosen again with it (None: the router keeps no threshold data)."""
        _check_text("description", description)
        try:
            return self._router.feedback_out_of_scope(description)
        finally:
            self.routes.clear()
