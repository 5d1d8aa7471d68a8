"""POST /api/v1/classify, POST /api/v1/classify/batch, GET /api/v1/classify/stats."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import falcon.asgi

from mole.frontend.analytics import Analytics
from mole.frontend.classify import Classifier, batch_failure, parse_item
from mole.frontend.dispatch import Dispatcher
from mole.frontend.errors import APIError, validation
from mole.frontend.gating_holder import GatingHolder, NotReady
from mole.frontend.limits import Limits, client_address
from mole.frontend.media import parse_body, respond

log = logging.getLogger("mole.frontend")


class Classify:
    auth = "user"

    def __init__(
        self,
        classifier: Classifier,
        *,
        max_body: int,
        max_chars: int,
        body_timeout_s: float,
        limits: Limits | None = None,
    ) -> None:
        self._classifier = classifier
        self._body_timeout = body_timeout_s
        self._max_body = max_body
        self._max_chars = max_chars
        self._limits = limits or Limits.disabled()

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = await parse_body(req, self._max_body, self._body_timeout)
        await self._limits.classify(req.context.user.username, client_address(req))
        item = parse_item(body, max_chars=self._max_chars)
        request_id = req.context.request_id
        body = await self._classifier.classify(item, request_id, self._classifier.deadline())
        respond(req, resp, body)


class ClassifyBatch:
    auth = "user"

    def __init__(
        self,
        classifier: Classifier,
        *,
        max_body: int,
        max_chars: int,
        limit: int,
        body_timeout_s: float,
        limits: Limits | None = None,
    ) -> None:
        self._classifier = classifier
        self._body_timeout = body_timeout_s
        self._max_body = max_body
        self._max_chars = max_chars
        self._limit = limit
        self._limits = limits or Limits.disabled()

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = await parse_body(req, self._max_body, self._body_timeout)
        if not isinstance(body, dict):
            raise validation("body", "must be an object with an items list")
        items = body.get("items")
        if not isinstance(items, list) or not items:
            raise validation("items", "must be a non-empty list of classify requests")
        if len(items) > self._limit:
            raise validation("items", f"has {len(items)} entries; the limit is {self._limit}")
        # every item counts, valid or not: each is work the client asked for
        await self._limits.classify(req.context.user.username, client_address(req), len(items))
        request_id = req.context.request_id
        valid: list[tuple[int, dict[str, Any]]] = []
        failed: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                valid.append(
                    (index, parse_item(item, max_chars=self._max_chars, prefix=f"items[{index}]."))
                )
            except APIError as err:
                failed.append(batch_failure(index, err, f"{request_id}-{index}"))
        answer = await self._classifier.classify_batch(valid, request_id)
        answer["results"] = sorted([*answer["results"], *failed], key=lambda r: r["index"])
        results = answer["results"]
        answer["successful"] = sum(1 for r in results if r["ok"])
        answer["failed"] = len(results) - answer["successful"]
        respond(req, resp, answer)


class Stats:
    """Registry facts, live workers per model (broker status) and request analytics."""

    auth = "user"

    def __init__(
        self,
        gating: GatingHolder,
        dispatcher: Dispatcher,
        analytics: Analytics,
        *,
        probe_timeout: float,
    ) -> None:
        self._gating = gating
        self._dispatcher = dispatcher
        self._analytics = analytics
        self._probe_timeout = probe_timeout

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        try:
            _, registry = self._gating.get()
        except NotReady as err:
            raise APIError("not_ready", str(err)) from None
        domains = {d: [t.name for t in registry.tasks_of_domain(d)] for d in registry.domains}
        models = sorted(
            {e.base_model_key for t in registry.tasks.values() for e in t.experts.values()}
        )
        workers: dict[str, int] | None = None
        broker_error = None
        try:
            status = await self._dispatcher.status(self._probe_timeout)
            services = status.get("services", {}) or {}
            workers = {m: int((services.get(m) or {}).get("workers", 0)) for m in models}
        except Exception as err:  # stats still answer without the broker
            broker_error = f"{type(err).__name__}: {err}"
        body = {
            "total_domains": len(registry.domains),
            "total_tasks": len(registry.tasks),
            "supported_languages": len(registry.languages),
            "all_languages": [lang.name for lang in registry.languages],
            "domains": domains,
            "tasks": {
                key: {
                    "domain": t.domain,
                    "task": t.name,
                    "kind": t.kind,
                    "languages": sorted(lang.name for lang in t.languages),
                    "labels": list(t.label_set),
                }
                for key, t in registry.tasks.items()
            },
            "live_workers": workers,
            "broker_error": broker_error,
            "analytics": await asyncio.to_thread(self._analytics.summary),
        }
        respond(req, resp, body)
