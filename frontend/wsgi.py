"""The WSGI entry point gunicorn loads in each worker process: ``frontend.wsgi:app``.

gunicorn runs without ``preload_app``, so this module is imported after fork, and the
ZeroMQ client, SQLite connections and gating models it creates belong to this worker
process only (a ZeroMQ socket shared across fork hangs requests; see field notes).
"""

from __future__ import annotations

import logging

from frontend.app import build_components, create_app
from frontend.settings import settings_from_env

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

components = build_components(settings_from_env())
app = create_app(components)


def shutdown() -> None:
    """Release this worker's client, connections and batch pool (gunicorn worker_exit)."""
    components.close()
