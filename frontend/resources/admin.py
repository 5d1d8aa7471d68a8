"""Admin-only endpoints: live workers (broker status), draining one worker and resuming
it (the broker's ``mmi.drain``/``mmi.resume``), the registry, registry reload."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import falcon.asgi

from mole.frontend.dispatch import Dispatcher
from mole.frontend.errors import APIError, from_request_error
from mole.frontend.gating_holder import GatingHolder, NotReady
from mole.frontend.media import respond
from mole.protocol import mdp
from mole.protocol.errors import RequestError
from mole.protocol.registry import ExpertsRegistry, RegistryError

log = logging.getLogger("mole.frontend.admin")


def registry_view(registry: ExpertsRegistry) -> dict[str, Any]:
    return {
        "path": str(registry.path) if registry.path else None,
        "base_models": sorted(registry.base_models),
        "domains": registry.domains,
        "languages": [lang.name for lang in registry.languages],
        "tasks": [
            {
                "task_key": key,
                "kind": t.kind,
                "labels": list(t.label_set),
                "languages": sorted(lang.name for lang in t.languages),
                "experts": {
                    e.language.name: {
                        "base_model_key": e.base_model_key,
                        "adapter_name": e.adapter_name,
                    }
                    for e in t.experts.values()
                },
            }
            for key, t in registry.tasks.items()
        ],
    }


class Workers:
    auth = "admin"

    def __init__(self, dispatcher: Dispatcher, *, timeout: float) -> None:
        self._dispatcher = dispatcher
        self._timeout = timeout

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        try:
            status = await self._dispatcher.status(self._timeout)
        except RequestError as err:
            raise from_request_error(err) from None
        respond(
            req,
            resp,
            {
                "mode": self._dispatcher.mode,
                "broker": status.get("broker"),
                "services": status.get("services", {}),
                "workers": status.get("workers", []),
                "counters": status.get("counters", {}),
            },
        )


class WorkerDrain:
    """``POST .../admin/workers/{worker_id}/drain`` and ``.../resume``: the broker's
    management services through this process's bus client.

    Two checks, on purpose: the caller must be an admin here, and the broker must let the
    frontend's CURVE key manage (``"@manage"`` in its ACL). ``mole up`` grants that to the
    operator's key only, so there this answers 403 ``forbidden`` and ``mole drain`` is the
    way; a deployment that wants drains from the admin API grants the frontend's key.
    """

    auth = "admin"

    def __init__(self, dispatcher: Dispatcher, *, timeout: float) -> None:
        self._dispatcher = dispatcher
        self._timeout = timeout

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, worker_id: str
    ) -> None:
        await self._manage(req, resp, mdp.MMI_DRAIN, worker_id)

    async def on_post_resume(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, worker_id: str
    ) -> None:
        await self._manage(req, resp, mdp.MMI_RESUME, worker_id)

    async def _manage(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, service: str, worker_id: str
    ) -> None:
        try:
            report = await self._dispatcher.manage(service, worker_id, self._timeout)
        except RequestError as err:
            raise from_request_error(err) from None
        user = req.context.user.username
        log.info("%s of worker %s by %s: %s", service, worker_id, user, report.get("state"))
        respond(req, resp, report)


class Registry:
    auth = "admin"

    def __init__(self, gating: GatingHolder) -> None:
        self._gating = gating

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        try:
            _, registry = self._gating.get()
        except NotReady as err:
            raise APIError("not_ready", str(err)) from None
        respond(req, resp, registry_view(registry))


class RegistryReload:
    """Re-read the registry file; a bad file is refused and the old registry stays."""

    auth = "admin"

    def __init__(self, gating: GatingHolder) -> None:
        self._gating = gating

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        try:
            registry = await asyncio.to_thread(self._gating.reload)
        except RegistryError as err:
            message = str(err)
            key = message.split(":", 1)[0] if ":" in message else None
            raise APIError(
                "invalid_registry",
                f"registry not reloaded, the old one stays in force: {message}",
                field=key,
            ) from None
        except Exception as err:
            log.exception("registry reload failed")
            raise APIError(
                "invalid_registry",
                f"registry not reloaded, the old one stays in force: {type(err).__name__}: {err}",
            ) from None
        log.info("registry reloaded by %s from %s", req.context.user.username, registry.path)
        respond(req, resp, {"reloaded": True, **registry_view(registry)})
