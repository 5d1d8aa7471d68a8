"""The Falcon ASGI app factory. It takes every dependency as an argument: no globals, no env.

``create_app`` wires resources to the objects it is given (tests pass a real SQLite user
store in a temporary directory, real gating, a dispatcher on a real broker);
``build_components`` makes those objects from :class:`~frontend.settings.Settings` for
the real server (``frontend.asgi``), in each gunicorn worker process after fork.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import falcon.asgi

from mole.frontend import error_handlers
from mole.frontend.analytics import Analytics
from mole.frontend.classify import Classifier
from mole.frontend.dispatch import Dispatcher, dispatcher_for
from mole.frontend.gating_holder import GatingHolder
from mole.frontend.limits import Limits
from mole.frontend.metrics import Metrics
from mole.frontend.middleware import Authenticator, RequestContext
from mole.frontend.openapi import openapi_document
from mole.frontend.passwords import PasswordHasher
from mole.frontend.resources import admin, auth, classify, dashboard, health, root
from mole.frontend.settings import Settings, resolve_secret
from mole.frontend.tokens import TokenService
from mole.frontend.users import UserStore

API = "/api/v1"

log = logging.getLogger("mole.frontend")


def new_request_id() -> str:
    """32 random hex digits, like ``uuid4().hex``, without its ``getrandom`` system call.

    A request id only has to be unique, not unguessable: it is echoed to the caller and
    written to logs, and grants nothing. The ``random`` module reseeds in every forked
    process, so gunicorn's workers draw different sequences.
    """
    return format(random.getrandbits(128), "032x")


@dataclass
class Components:
    """Everything the app is built from; ``close()`` releases it on worker exit."""

    settings: Settings
    dispatcher: Dispatcher
    gating: GatingHolder
    users: UserStore
    analytics: Analytics
    tokens: TokenService
    metrics: Metrics
    classifier: Classifier | None = None  # set by create_app
    limits: Limits | None = None  # None: nothing is rate-limited

    async def aclose(self) -> None:
        """Close the bus client, then flush and close the stores (off the loop)."""
        try:
            await self.dispatcher.close()
        except Exception:  # closing must go on for the others
            log.exception("closing the dispatcher failed")
        self.metrics.flush()
        await asyncio.to_thread(self._close_stores)

    def _close_stores(self) -> None:
        for part in (self.classifier, self.analytics, self.users, self.limits):
            if part is None:
                continue
            try:
                part.close()
            except Exception:  # closing must go on for the others
                log.exception("closing %s failed", type(part).__name__)


def create_app(
    components: Components,
    *,
    new_id: Callable[[], str] = new_request_id,
    clock: Callable[[], float] = time.monotonic,
) -> falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]:
    """Build the ASGI app from its parts."""
    s = components.settings
    metrics = components.metrics
    limits = components.limits or Limits.disabled()
    limits.on_refused = metrics.refused
    classifier = Classifier(
        gating=components.gating,
        dispatcher=components.dispatcher,
        analytics=components.analytics,
        metrics=metrics,
        request_timeout_s=s.request_timeout_s,
        batch_concurrency=s.batch_concurrency,
        clock=clock,
    )
    app = falcon.asgi.App(
        # falcon's defaults, named so its annotations bind the middleware's types
        request_type=falcon.asgi.Request,
        response_type=falcon.asgi.Response,
        middleware=[
            RequestContext(new_id, s.max_body_bytes, metrics, log_access=s.access_log),
            Authenticator(components.tokens, components.users, cache_ttl_s=s.user_cache_ttl_s),
        ],
    )
    app.req_options.strip_url_path_trailing_slash = True
    error_handlers.install(app)
    app.add_route("/", root.Root(s.version))
    app.add_route(f"{API}/openapi.json", root.OpenAPI(openapi_document(s)))
    app.add_route("/metrics", root.MetricsResource(metrics))
    app.add_route(
        f"{API}/auth/register",
        auth.Register(
            components.users,
            enabled=s.allow_registration,
            max_body=s.max_body_bytes,
            body_timeout_s=s.body_timeout_s,
            limits=limits,
        ),
    )
    app.add_route(
        f"{API}/auth/token",
        auth.Token(
            components.users,
            components.tokens,
            max_body=s.max_body_bytes,
            body_timeout_s=s.body_timeout_s,
            limits=limits,
        ),
    )
    app.add_route(
        f"{API}/classify",
        classify.Classify(
            classifier,
            max_body=s.max_body_bytes,
            max_chars=s.max_text_chars,
            body_timeout_s=s.body_timeout_s,
            limits=limits,
        ),
    )
    app.add_route(
        f"{API}/classify/batch",
        classify.ClassifyBatch(
            classifier,
            max_body=s.max_body_bytes,
            max_chars=s.max_text_chars,
            limit=s.batch_limit,
            body_timeout_s=s.body_timeout_s,
            limits=limits,
        ),
    )
    app.add_route(
        f"{API}/classify/stats",
        classify.Stats(
            components.gating,
            components.dispatcher,
            components.analytics,
            probe_timeout=s.broker_probe_timeout_s,
        ),
    )
    app.add_route(f"{API}/health", health.Health(s.version))
    app.add_route(f"{API}/health/live", health.Live())
    app.add_route(
        f"{API}/health/ready",
        health.Ready(
            components.gating, components.dispatcher, probe_timeout=s.broker_probe_timeout_s
        ),
    )
    app.add_route(
        f"{API}/admin/workers",
        admin.Workers(components.dispatcher, timeout=s.broker_probe_timeout_s * 3),
    )
    drain = admin.WorkerDrain(components.dispatcher, timeout=s.broker_probe_timeout_s * 3)
    app.add_route(f"{API}/admin/workers/{{worker_id}}/drain", drain)
    app.add_route(f"{API}/admin/workers/{{worker_id}}/resume", drain, suffix="resume")
    app.add_route(f"{API}/admin/registry", admin.Registry(components.gating))
    app.add_route(
        f"{API}/admin/dashboard",
        dashboard.Data(
            components.dispatcher, components.analytics, timeout=s.broker_probe_timeout_s * 3
        ),
    )
    page = dashboard.Page()
    app.add_route("/dashboard", page)
    app.add_route("/dashboard/{asset}", page, suffix="asset")
    app.add_route(f"{API}/admin/registry/reload", admin.RegistryReload(components.gating))
    components.classifier = classifier
    return app


def build_components(
    settings: Settings, *, gating: GatingHolder | None = None, dispatcher: Dispatcher | None = None
) -> Components:
    """The real parts, from settings. Call it in the process that serves (after fork).

    Raises:
        frontend.settings.SettingsError: the JWT secret is missing or unsafe.
    """
    secret = resolve_secret(settings)
    if gating is None:
        gating = GatingHolder(
            registry_path=settings.registry_path, stamp_path=settings.data_dir / "registry.reload"
        )
        gating.start()
    return Components(
        settings=settings,
        dispatcher=dispatcher
        or dispatcher_for(settings.service_mode, settings.broker_url, settings.request_timeout_s),
        gating=gating,
        users=UserStore(settings.users_db, PasswordHasher(settings.argon2_profile)),
        analytics=Analytics(settings.analytics_db),
        tokens=TokenService(
            secret, issuer=settings.jwt_issuer, ttl_seconds=settings.jwt_ttl_seconds
        ),
        metrics=Metrics(),
        limits=Limits.from_settings(settings),
    )
