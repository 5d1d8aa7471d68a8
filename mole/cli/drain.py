"""``mole drain WORKER_ID``: take one worker out of service without losing its requests.

The broker's status names every worker with the pid and host its READY reported. On the
worker's own machine this sends that pid SIGTERM, which drains the worker (no new work,
in-flight requests answered, then DISCONNECT; see ``worker.runtime``) and ends it; under
``mole up`` a drained worker is not restarted. The broker offers no remote command for
this (RFC 18 has none), so for a worker on another machine it says where to run it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from typing import Any

from mole.cli.stack_state import apply_stack_defaults


class DrainFailed(Exception):
    """The worker cannot be found or drained from here; the message says what to do."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("worker_id", help="the worker's id as `mole status` shows it")
    parser.add_argument(
        "--broker",
        default=None,
        help="broker endpoint (env MOLE_BROKER_URL; default: the running `mole up` stack's)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the worker to leave the broker (default 60)",
    )


def _status(broker: str) -> dict[str, Any]:
    from mole.protocol.client import Client
    from mole.protocol.curve import CurveKeys

    with Client(broker, timeout=5.0, curve=CurveKeys.from_env()) as client:
        status: dict[str, Any] = client.status(timeout=5.0)
    return status


def find_worker(status: dict[str, Any], worker_id: str) -> dict[str, Any] | None:
    for worker in status.get("workers", []):
        meta = worker.get("metadata") or {}
        if worker_id in (meta.get("worker_id"), worker.get("id")):
            return dict(worker)
    return None


def drain(broker: str, worker_id: str, timeout: float) -> str:
    """Drain ``worker_id``; returns what happened. Raises :class:`DrainFailed`."""
    from mole.protocol.curve import CurveKeyError
    from mole.protocol.errors import MoleError

    try:
        worker = find_worker(_status(broker), worker_id)
    except CurveKeyError as err:
        raise DrainFailed(f"{err} (MOLE_CURVE_SERVER_KEY / MOLE_CURVE_SECRET_KEY)") from err
    except MoleError as err:
        raise DrainFailed(f"the broker at {broker} does not answer: {err}") from err
    if worker is None:
        raise DrainFailed(f"no worker {worker_id!r} is registered; `mole status` lists them")
    meta = worker.get("metadata") or {}
    pid, host = meta.get("pid"), meta.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        raise DrainFailed(
            f"worker {worker_id!r} runs on {host or 'an unknown host'} (pid {pid}); run "
            "`mole drain` there, or stop it with SIGTERM (`systemctl stop mole-worker@KEY`, "
            "`docker stop`), which drains it the same way"
        )
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError as err:
        raise DrainFailed(f"worker {worker_id!r} (pid {pid}) is already gone") from err
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            if find_worker(_status(broker), worker_id) is None:
                return f"worker {worker_id} (pid {pid}) drained and left the broker"
        except MoleError:
            continue
    raise DrainFailed(f"worker {worker_id!r} (pid {pid}) still registered after {timeout:.0f} s")


def run(args: argparse.Namespace) -> int:
    apply_stack_defaults(os.environ)
    broker = args.broker or os.environ.get("MOLE_BROKER_URL") or "tcp://127.0.0.1:5555"
    try:
        print(f"mole drain: {drain(broker, args.worker_id, args.timeout)}")
    except DrainFailed as err:
        print(f"mole drain: {err}", file=sys.stderr)
        return 1
    return 0
