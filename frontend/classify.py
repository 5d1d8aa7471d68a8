"""Classification: validate the request, route it through gating, dispatch it, shape the answer.

One deadline per HTTP request (``REQUEST_TIMEOUT_SECONDS``), shared by every stage and, for
a batch, by every item: gating's time is taken from it and the broker request gets only
what is left.

Everything here runs on the event loop: gating is short CPU work (tens of microseconds)
and runs inline; the broker round trip is awaited; analytics and metrics only append to
in-memory tallies that are written out in batches, off the request path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mole.frontend.analytics import Analytics
from mole.frontend.dispatch import Dispatcher
from mole.frontend.errors import APIError, from_gating_error, from_request_error, validation
from mole.frontend.gating_holder import GatingHolder, NotReady
from mole.frontend.metrics import Metrics
from mole.protocol.errors import MoleError, RequestError

if TYPE_CHECKING:  # gating (numpy, fastText) is imported where the pipeline is loaded
    from mole.gating.pipeline import GatingResult

log = logging.getLogger("mole.frontend.classify")

_OPTION_NAMES = ("return_probabilities", "return_raw_response", "return_candidates")

#: Optional fields that skip a gating step: ``task`` (``rating`` or ``finance/rating``) and
#: ``language`` (an ISO 639-1 code or an English name).
GATING_CHOICE_FIELDS: tuple[str, ...] = ("task", "language")
#: Longest accepted value of a gating choice (task keys and language names are short).
CHOICE_LIMIT = 100


def _string(
    item: dict[str, Any], name: str, *, prefix: str, required: bool, limit: int
) -> str | None:
    value = item.get(name)
    if value is None:
        if required:
            raise validation(prefix + name, "is required (a non-empty string)")
        return None
    if not isinstance(value, str):
        raise validation(prefix + name, f"must be a string, not {type(value).__name__}")
    if required and not value.strip():
        raise validation(prefix + name, "must not be empty")
    if len(value) > limit:
        raise validation(prefix + name, f"is {len(value)} characters; the limit is {limit}")
    return value


#: Optional string fields of a ClassifyRequest that are passed to the worker as they are.
#: A new optional field is one more name here (and in the OpenAPI schema).
OPTIONAL_TEXT_FIELDS: tuple[str, ...] = ("query", "product")

#: Every field a ClassifyRequest may carry; any other is refused by name, so a typo
#: (``"langauge"``) or a field of another API (``"model"``) is never silently ignored.
KNOWN_FIELDS: frozenset[str] = frozenset(
    ("text", "description", "options", *OPTIONAL_TEXT_FIELDS, *GATING_CHOICE_FIELDS)
)


def _refuse_unknown(names: set[str], known: frozenset[str] | tuple[str, ...], where: str) -> None:
    unknown = sorted(names - set(known))
    if unknown:
        listed = ", ".join(repr(name) for name in unknown)
        raise validation(
            f"{where}{unknown[0]}",
            f"unknown field{'s' if len(unknown) > 1 else ''} {listed}; "
            f"accepted: {', '.join(sorted(known))}",
        )


def parse_item(item: Any, *, max_chars: int, prefix: str = "") -> dict[str, Any]:
    """Check one ClassifyRequest; returns the normalised fields.

    Raises:
        APIError: validation_error naming the field (``items[3].text`` in a batch).
    """
    if not isinstance(item, dict):
        raise validation(prefix.rstrip(".") or "body", "must be a JSON object")
    if not item.keys() <= KNOWN_FIELDS:  # one set operation in C on the usual request
        _refuse_unknown(set(item), KNOWN_FIELDS, prefix)
    text = _string(item, "text", prefix=prefix, required=True, limit=max_chars)
    parsed: dict[str, Any] = {"text": text}
    for name in GATING_CHOICE_FIELDS:
        value = _string(item, name, prefix=prefix, required=False, limit=CHOICE_LIMIT)
        if value is not None and not value.strip():
            raise validation(prefix + name, "must not be empty (leave it out to detect it)")
        parsed[name] = value
    # a caller who names the task needs no description to route by
    parsed["description"] = _string(
        item, "description", prefix=prefix, required=parsed["task"] is None, limit=max_chars
    )
    for name in OPTIONAL_TEXT_FIELDS:
        parsed[name] = _string(item, name, prefix=prefix, required=False, limit=max_chars)
    parsed["options"] = _parse_options(item.get("options"), prefix)
    return parsed


#: the options of a request that sends none (copied per request: the dict is the caller's)
_DEFAULT_OPTIONS: dict[str, bool] = dict.fromkeys(_OPTION_NAMES, False)


def _parse_options(options: Any, prefix: str) -> dict[str, bool]:
    if options is None:
        return dict(_DEFAULT_OPTIONS)
    if not isinstance(options, dict):
        raise validation(prefix + "options", "must be an object")
    _refuse_unknown(set(options), _OPTION_NAMES, prefix + "options.")
    parsed = {}
    for name in _OPTION_NAMES:
        value = options.get(name, False)
        if not isinstance(value, bool):
            raise validation(f"{prefix}options.{name}", "must be true or false")
        parsed[name] = value
    return parsed


class Classifier:
    """Gating + dispatch + analytics for one process, on its event loop."""

    def __init__(
        self,
        *,
        gating: GatingHolder,
        dispatcher: Dispatcher,
        analytics: Analytics,
        metrics: Metrics,
        request_timeout_s: float,
        batch_concurrency: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gating = gating
        self.dispatcher = dispatcher
        self.analytics = analytics
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self._clock = clock
        self._batch_concurrency = batch_concurrency

    def deadline(self) -> float:
        return self._clock() + self.request_timeout_s

    async def classify(
        self, item: dict[str, Any], request_id: str, deadline: float
    ) -> dict[str, Any]:
        """Answer one parsed item, or raise APIError (recorded in analytics either way)."""
        started = self._clock()
        facts: dict[str, Any] = {}
        try:
            body = await self._classify(item, request_id, deadline, started, facts)
        except APIError as err:
            self._record(facts, started, ok=False, error=err.code)
            log.debug(
                "request %s: %s/%s on %s failed: %s",
                request_id,
                facts.get("language"),
                facts.get("task"),
                facts.get("model"),
                err.code,
            )  # never the text
            raise
        self._record(facts, started, ok=True, confidence=body.get("confidence"))
        log.debug(
            "request %s: %s/%s on %s answered",
            request_id,
            facts.get("language"),
            facts.get("task"),
            facts.get("model"),
        )
        return body

    def _record(
        self,
        facts: dict[str, Any],
        started: float,
        *,
        ok: bool,
        error: str | None = None,
        confidence: Any = None,
    ) -> None:
        latency_ms = (self._clock() - started) * 1000.0
        conf = float(confidence) if isinstance(confidence, _NUMBER) else None
        try:
            self.analytics.record(
                ok=ok, latency_ms=latency_ms, error=error, confidence=conf, **facts
            )
        except Exception:  # analytics must never fail a request
            log.exception("could not record analytics")
        self.metrics.classification(
            facts.get("language") or "unknown",
            facts.get("task") or "unknown",
            facts.get("model") or "unknown",
            "ok" if ok else (error or "error"),
        )

    async def _classify(
        self,
        item: dict[str, Any],
        request_id: str,
        deadline: float,
        started: float,
        facts: dict[str, Any],
    ) -> dict[str, Any]:
        try:
            pipeline, _ = self.gating.get()
        except NotReady as err:
            raise APIError("not_ready", str(err)) from None
        given = frozenset(name for name in GATING_CHOICE_FIELDS if item.get(name) is not None)
        try:
            routed = pipeline.route(
                item["text"],
                item["description"],
                task=item.get("task"),
                language=item.get("language"),
                candidates=item["options"]["return_candidates"],
            )
        except MoleError as err:
            raise from_gating_error(err, given) from None
        expert = routed.expert
        facts.update(
            language=routed.language.name,
            domain=routed.domain,
            task=routed.task,
            model=expert.base_model_key,
        )
        gated = self._clock()
        remaining = deadline - gated
        if remaining <= 0:
            raise APIError(
                "deadline_exceeded",
                "the request ran out of time in gating (REQUEST_TIMEOUT_SECONDS)",
            )
        payload: dict[str, Any] = {
            "task": expert.task_key,
            "language": expert.language.code,
            "adapter": expert.adapter_name,
            "text": item["text"],
            "options": item["options"],
            # the worker's ESCI error then says that gating chose the task (or was told it)
            "routed_by": "caller" if item.get("task") is not None else "gating",
        }
        for name in OPTIONAL_TEXT_FIELDS:
            if item.get(name) is not None:
                payload[name] = item[name]
        try:
            reply = await self.dispatcher.dispatch(expert, payload, remaining)
        except RequestError as err:
            raise from_request_error(err) from None
        replied = self._clock()
        self.metrics.dispatched(expert.base_model_key, replied - gated)
        return self._shape(item, request_id, routed, reply, started, gated, replied)

    def _shape(
        self,
        item: dict[str, Any],
        request_id: str,
        routed: GatingResult,
        reply: Any,
        started: float,
        gated: float,
        replied: float,
    ) -> dict[str, Any]:
        expert = routed.expert
        if not isinstance(reply, dict) or "result" not in reply:
            raise APIError(
                "internal",
                f"the worker for {expert.base_model_key} sent a reply "
                "without a result; is it a MoLE expert worker?",
            )
        result = reply.get("result")
        if not isinstance(result, str):
            result = json.dumps(result, ensure_ascii=False)
        # gating's own step timings (floats it measured), then the worker's numbers
        timings = {k: round(v, 3) for k, v in routed.timings.items()}
        worker_timings = reply.get("timings")
        if isinstance(worker_timings, dict):
            for k, v in worker_timings.items():
                if isinstance(v, _NUMBER):
                    timings[k] = v
        timings["gating_ms"] = round((gated - started) * 1000.0, 3)
        timings["dispatch_ms"] = round((replied - gated) * 1000.0, 3)
        body: dict[str, Any] = {
            "request_id": request_id,
            "language": routed.language.name,
            "language_confidence": _float_or_none(routed.language_confidence),
            "domain": routed.domain,
            "task": routed.task,
            "result": result,
            "confidence": _float_or_none(reply.get("confidence")),
            "routing_path": routed.routing_path,
            "given": list(routed.given),
            "processing_time_ms": round((self._clock() - started) * 1000.0, 3),
            "worker_id": _str_or_none(reply.get("worker_id")),
            "model": _str_or_none(reply.get("model")) or expert.base_model_key,
            "adapter": _str_or_none(reply.get("adapter")) or expert.adapter_name,
            "timings": timings,
        }
        if expert.kind == "extraction" or "entities" in reply:
            entities = reply.get("entities") or []
            body["entities"] = [e for e in entities if isinstance(e, dict)]
        if item["options"]["return_probabilities"]:
            probabilities = reply.get("probabilities")
            body["probabilities"] = probabilities if isinstance(probabilities, dict) else None
        if item["options"]["return_raw_response"]:
            body["raw_response"] = _str_or_none(reply.get("raw_response"))
        if "tiny_model" in reply:
            body["tiny_model"] = bool(reply["tiny_model"])
        if reply.get("truncated"):
            body["truncated"] = True
        return body

    async def classify_batch(
        self, items: list[tuple[int, dict[str, Any]]], request_id: str
    ) -> dict[str, Any]:
        """Every ``(index, item)`` concurrently (at most ``batch_concurrency`` at once) on
        the shared client; one deadline for the whole batch. Item ``i`` is answered as
        request ``request_id-i``."""
        started = self._clock()
        deadline = started + self.request_timeout_s
        gate = asyncio.Semaphore(self._batch_concurrency)

        async def one(index: int, item: dict[str, Any]) -> dict[str, Any]:
            item_id = f"{request_id}-{index}"
            async with gate:
                try:
                    result = await self.classify(item, item_id, deadline)
                except APIError as err:
                    return batch_failure(index, err, item_id)
                except Exception:
                    log.exception("batch item %d of request %s failed", index, request_id)
                    return batch_failure(
                        index, APIError("internal_error", "internal error"), item_id
                    )
            return {"index": index, "ok": True, "result": result}

        results = list(await asyncio.gather(*(one(index, entry) for index, entry in items)))
        ok = sum(1 for r in results if r["ok"])
        return {
            "request_id": request_id,
            "results": results,
            "total_processing_time_ms": round((self._clock() - started) * 1000.0, 3),
            "successful": ok,
            "failed": len(results) - ok,
        }

    def close(self) -> None:
        """Nothing to release: batches run as tasks on the loop."""


def batch_failure(index: int, err: APIError, request_id: str) -> dict[str, Any]:
    """A failed batch item: the top-level error fields (``error``, ``detail``,
    ``request_id``, ``field`` when one is at fault) beside ``index`` and ``ok``."""
    return {"index": index, "ok": False, **err.body(request_id)}


#: a tuple, not ``int | float``: isinstance takes a third less time with it (per request)
_NUMBER = (int, float)


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, _NUMBER) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
