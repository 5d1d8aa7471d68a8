"""Why gating could not route a request, as exception types with stable ``code`` strings.

The frontend maps ``code`` to an HTTP status in one table; callers catch causes
(``UnsupportedLanguage``) rather than parse messages. Every message says what was found
and what would have been accepted, so a person can act on it.

Hierarchy::

    GatingError                      (MoleError)
    ├── InvalidInput                 bad_request            empty text/description, wrong types
    ├── UnsupportedLanguage          unsupported_language   .language, .served, .task
    ├── LanguageUncertain            language_uncertain     .candidate, .confidence, .served
    ├── UnknownDomain                unknown_domain         .domain, .known
    ├── DomainWithoutTasks           domain_without_tasks   .domain, .served_domains
    ├── UnknownTask                  unknown_task           .task, .known
    ├── TaskNotServed                task_not_served        .served, .score, .threshold, .candidates
    └── ArtifactError                gating_artifact        a model file is missing or invalid
"""

from __future__ import annotations

from typing import Any

from mole.protocol.errors import MoleError


class GatingError(MoleError):
    """Base of every error gating raises; ``code`` names the cause."""

    code: str = "gating_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view for error bodies: code, message and the cause's fields."""
        extra = {
            k: v for k, v in vars(self).items() if k not in ("message", "args") and v is not None
        }
        return {"error": self.code, "message": self.message, **extra}


class InvalidInput(GatingError):
    """The text or description is empty or not a string; resending it will not help."""

    code = "bad_request"


class UnsupportedLanguage(GatingError):
    """The text is in a language the registry (or the chosen task) does not serve."""

    code = "unsupported_language"

    def __init__(
        self,
        message: str,
        *,
        language: str,
        served: list[str],
        task: str | None = None,
        confidence: float | None = None,
    ) -> None:
        super().__init__(message)
        self.language = language
        self.served = served
        self.task = task
        self.confidence = confidence


class LanguageUncertain(GatingError):
    """The detector's best served guess is under the confidence floor."""

    code = "language_uncertain"

    def __init__(
        self,
        message: str,
        *,
        candidate: str | None,
        confidence: float,
        floor: float,
        served: list[str],
    ) -> None:
        super().__init__(message)
        self.candidate = candidate
        self.confidence = confidence
        self.floor = floor
        self.served = served


class UnknownDomain(GatingError):
    """A domain name that neither the registry nor the classifier knows."""

    code = "unknown_domain"

    def __init__(self, message: str, *, domain: str, known: list[str]) -> None:
        super().__init__(message)
        self.domain = domain
        self.known = known


class DomainWithoutTasks(GatingError):
    """The domain classifier predicted a domain for which the registry has no task."""

    code = "domain_without_tasks"

    def __init__(self, message: str, *, domain: str, served_domains: list[str]) -> None:
        super().__init__(message)
        self.domain = domain
        self.served_domains = served_domains


class UnknownTask(GatingError):
    """A task name (e.g. in feedback) that is not one of the domain's tasks."""

    code = "unknown_task"

    def __init__(self, message: str, *, task: str, known: list[str]) -> None:
        super().__init__(message)
        self.task = task
        self.known = known


class TaskNotServed(GatingError):
    """The description asks for something none of the served tasks does (the router
    refused it): resending it will not help; name a served task or rephrase.

    ``candidates`` (the router's tasks with their Q-values, best first) is filled only
    when the caller asked for them; ``score`` is the description's scope score and
    ``threshold`` the score under which a description is refused.
    """

    code = "task_not_served"

    def __init__(
        self,
        message: str,
        *,
        served: list[str],
        score: float,
        threshold: float,
        candidates: list[dict[str, float | str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.served = served
        self.score = score
        self.threshold = threshold
        self.candidates = candidates


class ArtifactError(GatingError):
    """A gating model file is missing, unreadable or not in the expected format."""

    code = "gating_artifact"
