"""The ASGI entry point gunicorn's uvicorn worker loads in each worker process:
``mole.frontend.asgi:app``.

gunicorn runs without ``preload_app``, so this module is imported after fork: the SQLite
connections and gating models it creates belong to this worker process only, and the bus
client is made on this process's event loop at lifespan start-up (a ZeroMQ socket shared
across fork hangs requests; see field notes).
"""

from __future__ import annotations

import logging
import os

from mole.frontend.app import build_components, create_app
from mole.frontend.guard import ServerGuard
from mole.frontend.settings import settings_from_env

# MOLE_FRONTEND_LOG_LEVEL sets gunicorn's level too (gunicorn_conf); request texts are
# never logged at any level, so debug is safe to switch on.
_LEVEL = os.environ.get("MOLE_FRONTEND_LOG_LEVEL", "info").upper()
logging.basicConfig(
    level=getattr(logging, _LEVEL, logging.INFO),
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)

settings = settings_from_env()
components = build_components(settings)
app = ServerGuard(
    create_app(components),
    max_connections=settings.max_connections,
    on_startup=components.dispatcher.start,
    on_shutdown=components.aclose,
)
