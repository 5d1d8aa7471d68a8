"""The seam between the worker runtime (sockets, heartbeats) and what computes answers.

The runtime owns the ZeroMQ socket in its own thread and never runs handler code there, so
heartbeats flow while a batch computes. It gives each request to :meth:`Handler.submit`
with a :class:`Responder`; the handler answers later, from any thread, exactly once, by
``responder.final(...)`` or ``responder.error(...)`` (``partial`` any number of times
before). The inference engine implements this interface with dynamic batching; the echo
handler implements it for tests and benchmarks.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any

from mole.protocol.errors import ErrorCode


@dataclass(slots=True)
class WorkRequest:
    """One request as a handler sees it."""

    request_id: str
    payload: Any  # the decoded msgpack payload
    deadline: float | None = None  # time.monotonic() after which nobody waits for the answer
    attempt: int = 0
    received_at: float = field(default_factory=time.monotonic)

    def expired(self, now: float | None = None) -> bool:
        if self.deadline is None:
            return False
        return (time.monotonic() if now is None else now) >= self.deadline


class Responder(abc.ABC):
    """Where a handler sends the answer to one request. Thread-safe; final answer once."""

    @abc.abstractmethod
    def partial(self, payload: Any) -> None:
        """Send an intermediate result (PARTIAL); the request stays open."""

    @abc.abstractmethod
    def final(self, payload: Any) -> None:
        """Send the result (FINAL) and close the request."""

    @abc.abstractmethod
    def error(self, code: ErrorCode | str, message: str, details: Any = None) -> None:
        """Close the request with an error reply carrying ``code`` and ``message``."""


class Handler(abc.ABC):
    """Computes answers for one service (one base_model_key)."""

    #: How many requests the broker may give this worker at once.
    slots: int = 1

    def metadata(self) -> dict[str, Any]:
        """Sent with READY: tasks, languages, adapters, device, versions."""
        return {}

    def start(self) -> None:
        """Called once before the worker registers."""

    @abc.abstractmethod
    def submit(self, request: WorkRequest, responder: Responder) -> None:
        """Take a request; must return quickly (queue the work, do not compute here)."""

    def close(self) -> None:
        """Release resources; called once when the worker stops."""
