"""The WSGI entry point gunicorn loads in each worker process: ``frontend.wsgi:app``.

gunicorn runs without ``preload_app``, so this module is imported after fork, and the
ZeroMQ client, SQLite connections and gating models it creates belong to this worker
process only (a ZeroMQ socket shared across fork hangs requests; see docs/design.md).
"""

from __future__ import annotations

import logging
import os

from mole.frontend.app import build_components, create_app
from mole.frontend.settings import settings_from_env

# MOLE_FRONTEND_LOG_LEVEL sets gunicorn's level too (gunicorn_conf); request texts are
# never logged at any level, so debug is safe to switch on.
_LEVEL = os.environ.get("MOLE_FRONTEND_LOG_LEVEL", "info").upper()
logging.basicConfig(
    level=getattr(logging, _LEVEL, logging.INFO),
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)

components = build_components(settings_from_env())
app = create_app(components)


def shutdown() -> None:
    """Release this worker's client, connections and batch pool (gunicorn worker_exit)."""
    components.close()
