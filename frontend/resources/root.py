"""GET / (service card), GET /api/v1/openapi.json and GET /metrics."""

from __future__ import annotations

from typing import Any

import falcon.asgi

from mole.frontend.media import respond
from mole.frontend.metrics import Metrics


class Root:
    auth = "public"

    def __init__(self, version: str) -> None:
        self._version = version

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        respond(
            req,
            resp,
            {
                "name": "MoLE classification service",
                "version": self._version,
                "docs": "/api/v1/openapi.json",
                "health": "/api/v1/health",
            },
        )


class OpenAPI:
    auth = "public"

    def __init__(self, document: dict[str, Any]) -> None:
        self._document = document

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        respond(req, resp, self._document)


class MetricsResource:
    auth = "public"

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.data, resp.content_type = self._metrics.exposition()
