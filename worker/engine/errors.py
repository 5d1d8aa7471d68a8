"""The engine's exceptions, in the bus's error vocabulary.

A payload the engine cannot serve raises :class:`InvalidPayload`, a ``BadRequest`` that
names the field at fault, so the batching handler and the single-machine pool answer it
with ``bad_request`` exactly as the client library would raise it. Load failures are
:class:`ModelLoadError`: the worker exits non-zero with its message, before registering.
"""

from __future__ import annotations

from mole.protocol.errors import BadRequest, MoleError


class EngineError(MoleError):
    """Base of the engine's own failures (not a request's fault)."""


class ModelLoadError(EngineError):
    """A base model, tokenizer, adapter or template could not be loaded; names what."""


class EngineClosed(EngineError):
    """The engine was closed (evicted from a pool) and holds no model any more."""


class InvalidPayload(BadRequest):
    """A request payload the engine cannot serve; ``field`` names the culprit."""

    def __init__(self, field: str, message: str, *, request_id: str | None = None) -> None:
        super().__init__(f"{field}: {message}", request_id=request_id, details={"field": field})
        self.field = field
