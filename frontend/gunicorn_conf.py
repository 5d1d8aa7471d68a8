"""gunicorn configuration for ``mole frontend`` (threaded workers).

Why these choices:

* threads (``frontend.gworker.KeepAliveThreadWorker``, gunicorn's ``gthread`` that keeps a
  busy keep-alive connection on its thread): requests mostly wait on the broker, so
  threads per process give concurrency cheaply; each thread sends on a ZeroMQ socket of
  its own (``protocol.threaded.PerThreadClient``).
* no ``preload_app``: the app (ZeroMQ client, SQLite, gating models) is built in each
  worker after fork, never in the master.
* ``graceful_timeout``: on SIGTERM a worker finishes its in-flight requests first.
* ``PROMETHEUS_MULTIPROC_DIR`` is created and emptied by the launcher before gunicorn
  starts (not here); ``child_exit`` marks a dead worker's files so gauges stay right.

Values come from the environment the launcher sets (``MOLE_FRONTEND_*``).
"""

from __future__ import annotations

import os

bind = os.environ.get("MOLE_FRONTEND_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("MOLE_FRONTEND_WORKERS", "2"))
worker_class = "mole.frontend.gworker.KeepAliveThreadWorker"
threads = int(os.environ.get("MOLE_FRONTEND_THREADS", "16"))
preload_app = False
timeout = int(os.environ.get("MOLE_FRONTEND_WORKER_TIMEOUT", "180"))
graceful_timeout = int(os.environ.get("MOLE_FRONTEND_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
backlog = 2048
limit_request_line = 8190
limit_request_fields = 100
accesslog = os.environ.get("MOLE_FRONTEND_ACCESS_LOG") or None  # "-" for stdout
# Peer, time, method, path WITHOUT the query string (%(U)s, not %(r)s or %(q)s), status,
# bytes, seconds and the request id. Never a body (gunicorn has no atom for one) and no
# request headers (Authorization carries the bearer token).
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(L)s %({x-request-id}o)s'
errorlog = "-"
loglevel = os.environ.get("MOLE_FRONTEND_LOG_LEVEL", "info")
proc_name = "mole-frontend"
wsgi_app = "mole.frontend.wsgi:app"


def worker_exit(server, worker) -> None:
    """Close this worker's client and databases once its last request is answered."""
    import sys

    module = sys.modules.get("mole.frontend.wsgi")
    if module is not None:
        module.shutdown()


def child_exit(server, worker) -> None:
    from mole.frontend.metrics import mark_process_dead

    mark_process_dead(worker.pid)
