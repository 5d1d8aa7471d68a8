"""gunicorn configuration for ``mole frontend``: the process manager over uvicorn workers.

Why these choices:

* ``worker_class``: ``frontend.server.MoleUvicornWorker`` (gunicorn's uvicorn worker,
  ``uvicorn_worker.UvicornWorker``, with the frontend's protocol and limits): one event
  loop per process; a request waiting on the broker, or a slow client, costs a
  coroutine, not a thread.
* no ``preload_app``: the app (ZeroMQ client, SQLite, gating models) is built in each
  worker after fork, never in the master.
* ``graceful_timeout``: on SIGTERM a worker stops accepting, finishes its in-flight
  requests, then runs the ASGI lifespan shut-down (client closed, stores flushed).
* ``control_socket_disable``: gunicorn's control socket defaults to one path per user
  (``~/.gunicorn/gunicorn.ctl``), which two stacks on one machine would share; the
  frontend does not use it.
* ``PROMETHEUS_MULTIPROC_DIR`` is created and emptied by the launcher before gunicorn
  starts (not here); ``child_exit`` marks a dead worker's files so gauges stay right.

Values come from the environment the launcher sets (``MOLE_FRONTEND_*``).
"""

from __future__ import annotations

import os
from typing import Any

bind = os.environ.get("MOLE_FRONTEND_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("MOLE_FRONTEND_WORKERS", "2"))
worker_class = "mole.frontend.server.MoleUvicornWorker"
preload_app = False
timeout = int(os.environ.get("MOLE_FRONTEND_WORKER_TIMEOUT", "180"))
graceful_timeout = int(os.environ.get("MOLE_FRONTEND_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("MOLE_KEEPALIVE_SECONDS", "5"))
backlog = 2048
control_socket_disable = True
errorlog = "-"
loglevel = os.environ.get("MOLE_FRONTEND_LOG_LEVEL", "info")
proc_name = "mole-frontend"
wsgi_app = "mole.frontend.asgi:app"


def child_exit(server: Any, worker: Any) -> None:
    from mole.frontend.metrics import mark_process_dead

    mark_process_dead(worker.pid)
