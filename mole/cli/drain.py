"""``mole drain WORKER_ID``: take one worker out of service without losing its requests.

By default it asks the broker (``mmi.drain``, see docs/interfaces.md), so it works for a
worker on any machine: the broker gives that worker no new requests, lets what it holds
finish (the answers reach their clients) and remembers the drain until ``mole drain
--resume WORKER_ID``, even if the worker reconnects. The command then polls until the
worker is idle (``--no-wait`` returns at once). ``--disconnect`` also has the broker send
the worker DISCONNECT once idle and refuse its READY until it is resumed.

Under ``mole up`` it finds the stack's broker and uses the operator's CURVE key, as
``mole status`` does; only that key may use the management services.

``--local`` is the older path for a worker on this machine: SIGTERM to the pid its READY
reported, which drains the worker process itself and ends it with status 0 (``mole up``
does not restart it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from mole.cli.stack_state import apply_stack_defaults

#: Seconds between polls of a draining worker.
POLL_INTERVAL_S = 0.3
#: States in which a drained worker holds no request (``broker.management``).
IDLE_STATES = ("drained", "offline")


class DrainFailed(Exception):
    """The worker cannot be found or drained; the message says what to do."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("worker_id", help="the worker's id as `mole status` shows it")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="undo a drain: the worker takes new requests again",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the broker has marked the worker draining, without waiting "
        "for its requests to finish",
    )
    parser.add_argument(
        "--disconnect",
        action="store_true",
        help="once idle, the broker sends the worker DISCONNECT and refuses its READY "
        "until --resume (off by default: it stays connected, idle)",
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="instead of asking the broker, send SIGTERM to the worker's process on this "
        "machine (it drains itself and exits 0)",
    )
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
        help="how long to wait for the worker to become idle (default 60)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the broker's last report as JSON"
    )


def _curve() -> Any:
    from mole.protocol.curve import CurveKeyError, CurveKeys

    try:
        return CurveKeys.from_env()
    except CurveKeyError as err:
        raise DrainFailed(f"{err} (MOLE_CURVE_SERVER_KEY / MOLE_CURVE_SECRET_KEY)") from err


def _ask(client: Any, broker: str, service: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One management request; its report, or :class:`DrainFailed` saying why not."""
    from mole.protocol.errors import DeadlineExceeded, MoleError, RequestError

    try:
        report: dict[str, Any] = client.request(service, payload, timeout=5.0)
    except DeadlineExceeded as err:
        raise DrainFailed(f"the broker at {broker} does not answer: {err}") from err
    except RequestError as err:
        raise DrainFailed(str(err)) from err
    except MoleError as err:
        raise DrainFailed(f"the broker at {broker} does not answer: {err}") from err
    return report


def drain(
    broker: str,
    worker_id: str,
    *,
    wait: bool = True,
    disconnect: bool = False,
    timeout: float = 60.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Drain ``worker_id`` through the broker; the last report. Raises :class:`DrainFailed`
    (also when the worker is still busy after ``timeout``: it stays drained)."""
    from mole.protocol import mdp
    from mole.protocol.client import Client

    wanted = ("offline",) if disconnect else IDLE_STATES
    with Client(broker, timeout=5.0, curve=_curve()) as client:
        report = _ask(
            client, broker, mdp.MMI_DRAIN, {"worker": worker_id, "disconnect": disconnect}
        )
        deadline = time.monotonic() + timeout
        last_in_flight = None
        while wait and report["state"] not in wanted:
            if on_progress is not None and report["in_flight"] != last_in_flight:
                on_progress(report)
                last_in_flight = report["in_flight"]
            if time.monotonic() >= deadline:
                raise DrainFailed(
                    f"worker {worker_id} is still {report['state']} with "
                    f"{report['in_flight']} request(s) in flight after {timeout:g} s; it "
                    f"stays drained: run `mole drain {worker_id}` again to wait, or "
                    f"`mole drain --resume {worker_id}`"
                )
            time.sleep(POLL_INTERVAL_S)
            report = _ask(client, broker, mdp.MMI_DRAIN, {"worker": worker_id})
    return report


def resume(broker: str, worker_id: str) -> dict[str, Any]:
    """Undo a drain of ``worker_id``; the broker's report. Raises :class:`DrainFailed`."""
    from mole.protocol import mdp
    from mole.protocol.client import Client

    with Client(broker, timeout=5.0, curve=_curve()) as client:
        return _ask(client, broker, mdp.MMI_RESUME, {"worker": worker_id})


def describe(report: dict[str, Any]) -> str:
    """One line for a person, from a ``mmi.drain``/``mmi.resume`` report."""
    worker, service, state = report["worker"], report["service"], report["state"]
    head = f"worker {worker} ({service})"
    if state == "draining":
        return f"{head} draining: {report['in_flight']} request(s) in flight, no new ones"
    if state == "drained":
        return (
            f"{head} drained: idle and connected, gets no new requests until "
            f"`mole drain --resume {worker}`"
        )
    if state == "offline":
        return (
            f"{head} drained and disconnected: the broker refuses it until "
            f"`mole drain --resume {worker}`"
            if report.get("disconnect")
            else f"{head} drained and not connected; it stays drained if it comes back"
        )
    if state == "active":
        return f"{head} resumed: takes new requests"
    return f"{head} resumed: takes new requests once it registers again"


# ---------------------------------------------------------------------- the local path


def _status(broker: str) -> dict[str, Any]:
    from mole.protocol.client import Client

    with Client(broker, timeout=5.0, curve=_curve()) as client:
        status: dict[str, Any] = client.status(timeout=5.0)
    return status


def find_worker(status: dict[str, Any], worker_id: str) -> dict[str, Any] | None:
    for worker in status.get("workers", []):
        meta = worker.get("metadata") or {}
        if worker_id in (meta.get("worker_id"), worker.get("id")):
            return dict(worker)
    return None


def drain_local(broker: str, worker_id: str, timeout: float) -> str:
    """SIGTERM the worker's process on this machine; returns what happened."""
    from mole.protocol.errors import MoleError

    try:
        worker = find_worker(_status(broker), worker_id)
    except MoleError as err:
        raise DrainFailed(f"the broker at {broker} does not answer: {err}") from err
    if worker is None:
        raise DrainFailed(f"no worker {worker_id!r} is registered; `mole status` lists them")
    meta = worker.get("metadata") or {}
    pid, host = meta.get("pid"), meta.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        raise DrainFailed(
            f"worker {worker_id!r} runs on {host or 'an unknown host'} (pid {pid}); drop "
            "--local to drain it through the broker"
        )
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError as err:
        raise DrainFailed(f"worker {worker_id!r} (pid {pid}) is already gone") from err
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
        try:
            if find_worker(_status(broker), worker_id) is None:
                return f"worker {worker_id} (pid {pid}) drained and left the broker"
        except MoleError:
            continue
    raise DrainFailed(f"worker {worker_id!r} (pid {pid}) still registered after {timeout:.0f} s")


def run(args: argparse.Namespace) -> int:
    apply_stack_defaults(os.environ)
    broker = args.broker or os.environ.get("MOLE_BROKER_URL") or "tcp://127.0.0.1:5555"
    if args.timeout <= 0:
        print("mole drain: --timeout must be > 0", file=sys.stderr)
        return 2
    if args.resume and (args.local or args.disconnect or args.no_wait):
        print(
            "mole drain: --resume takes none of --local, --disconnect, --no-wait", file=sys.stderr
        )
        return 2

    def progress(report: dict[str, Any]) -> None:
        print(f"mole drain: {describe(report)}", flush=True)

    try:
        if args.local:
            print(f"mole drain: {drain_local(broker, args.worker_id, args.timeout)}")
            return 0
        if args.resume:
            report = resume(broker, args.worker_id)
        else:
            report = drain(
                broker,
                args.worker_id,
                wait=not args.no_wait,
                disconnect=args.disconnect,
                timeout=args.timeout,
                on_progress=None if args.json else progress,
            )
    except DrainFailed as err:
        print(f"mole drain: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(f"mole drain: {describe(report)}")
        if report.get("note"):
            print(f"mole drain: note: {report['note']}")
    return 0
