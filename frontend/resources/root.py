"""GET / (service card), GET /api/v1/openapi.json and GET /metrics."""

from __future__ import annotations

import falcon

from mole.frontend.media import respond
from mole.frontend.metrics import Metrics


class Root:
    auth = "public"

    def __init__(self, version: str) -> None:
        self._version = version

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
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

    def __init__(self, document: dict) -> None:
        self._document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        respond(req, resp, self._document)


class MetricsResource:
    auth = "public"

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data, resp.content_type = self._metrics.exposition()
