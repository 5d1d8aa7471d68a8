"""Health probes: /health (process up), /health/live, /health/ready (gating + broker)."""

from __future__ import annotations

from typing import Any

import falcon.asgi

from mole.frontend.dispatch import Dispatcher
from mole.frontend.gating_holder import GatingHolder
from mole.frontend.media import respond


class Health:
    auth = "public"

    def __init__(self, version: str) -> None:
        self._version = version

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        respond(req, resp, {"status": "healthy", "version": self._version})


class Live:
    auth = "public"

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        respond(req, resp, {"status": "alive"})


class Ready:
    """200 once gating is loaded and the broker answers; 503 with the reasons until then."""

    auth = "public"

    def __init__(
        self, gating: GatingHolder, dispatcher: Dispatcher, *, probe_timeout: float
    ) -> None:
        self._gating = gating
        self._dispatcher = dispatcher
        self._probe_timeout = probe_timeout

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        gating = self._gating.state()
        try:
            status = await self._dispatcher.status(self._probe_timeout)
            services = status.get("services", {}) or {}
            backend = {
                "ready": True,
                "mode": self._dispatcher.mode,
                "services": {k: int((v or {}).get("workers", 0)) for k, v in services.items()},
            }
        except Exception as err:
            backend = {
                "ready": False,
                "mode": self._dispatcher.mode,
                "detail": f"broker did not answer: {type(err).__name__}: {err}",
            }
        ok = gating["ready"] and backend["ready"]
        checks: dict[str, dict[str, Any]] = {"gating": gating, "broker": backend}
        body: dict[str, Any] = {"status": "ready" if ok else "not_ready", "checks": checks}
        if not ok:
            waiting = [name for name, check in checks.items() if not check["ready"]]
            body.update(
                error="not_ready",
                request_id=req.context.request_id,
                detail=f"waiting for: {', '.join(waiting)}",
            )
            resp.set_header("Retry-After", "5")
        respond(req, resp, body, 200 if ok else 503)
