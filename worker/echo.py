"""EchoHandler: test and benchmark SCAFFOLDING, not an expert. It classifies nothing.

It answers every request with the payload it got, plus who answered, so tests and
benchmarks can drive the broker, the client library and the worker runtime without a
model. Its behaviour is set per worker (``delay_s``: fixed service time; ``partials``:
PARTIAL replies before the FINAL) and may be overridden per request by a dict payload
carrying an ``"_echo"`` map::

    {"_echo": {"delay_s": 2.0, "partials": 3, "error": "bad_request", "message": "..."}}

Delayed work runs in a thread pool of ``slots`` threads, so a long delay never blocks the
runtime's heartbeats. Run one as a process::

    python -m worker.echo --broker tcp://127.0.0.1:5555 --service echo --slots 4 --delay 0.01
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mole.protocol.curve import CurveKeyError, CurveKeys
from mole.worker.handler import Handler, Responder, WorkRequest
from mole.worker.runtime import DEFAULT_HEARTBEAT_INTERVAL_S, DEFAULT_LIVENESS, WorkerRuntime

log = logging.getLogger("mole.worker.echo")


class EchoHandler(Handler):
    """Replies ``{"echo": payload, "worker_id", "request_id", "attempt"}``. Scaffolding."""

    def __init__(
        self, *, slots: int = 1, delay_s: float = 0.0, partials: int = 0, worker_id: str = "echo"
    ) -> None:
        self.slots = max(1, int(slots))
        self.delay_s = float(delay_s)
        self.partials = int(partials)
        self.worker_id = worker_id
        self._pool: ThreadPoolExecutor | None = None
        self.handled = 0
        self._lock = threading.Lock()

    def metadata(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "tasks": ["echo"],
            "device": "cpu",
            "echo": True,
            "delay_s": self.delay_s,
        }

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="echo")

    def submit(self, request: WorkRequest, responder: Responder) -> None:
        control = _control(request.payload)
        delay = float(control.get("delay_s", self.delay_s))
        partials = int(control.get("partials", self.partials))
        if delay <= 0 and partials <= 0:
            self._answer(request, responder, control)  # nothing to wait for: answer inline
            return
        if self._pool is None:
            raise RuntimeError("EchoHandler.start() was not called")
        self._pool.submit(self._serve, request, responder, control, delay, partials)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _serve(
        self,
        request: WorkRequest,
        responder: Responder,
        control: dict[str, Any],
        delay: float,
        partials: int,
    ) -> None:
        try:
            for index in range(partials):
                responder.partial(
                    {
                        "partial": index,
                        "worker_id": self.worker_id,
                        "request_id": request.request_id,
                    }
                )
            if delay > 0:
                time.sleep(delay)
            self._answer(request, responder, control)
        except Exception as err:  # keep the pool thread alive; close the request
            log.exception("echo request %s failed", request.request_id)
            responder.error("internal", f"echo handler failed: {err}")

    def _answer(self, request: WorkRequest, responder: Responder, control: dict[str, Any]) -> None:
        with self._lock:
            self.handled += 1
        if "error" in control:
            responder.error(str(control["error"]), str(control.get("message", "echo error")))
            return
        responder.final(
            {
                "echo": request.payload,
                "worker_id": self.worker_id,
                "request_id": request.request_id,
                "attempt": request.attempt,
            }
        )


def _control(payload: Any) -> dict[str, Any]:
    if isinstance(payload, dict):
        control = payload.get("_echo")
        if isinstance(control, dict):
            return control
    return {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker.echo",
        description="Run an ECHO worker (test/benchmark scaffolding: it classifies nothing).",
    )
    env = os.environ.get
    parser.add_argument(
        "--broker",
        default=env("MOLE_BROKER_URL"),
        required=not env("MOLE_BROKER_URL"),
        help="broker address, e.g. tcp://host:5555 (MOLE_BROKER_URL)",
    )
    parser.add_argument("--service", required=True, help="service name to register")
    parser.add_argument("--slots", type=int, default=1, help="concurrent requests (default 1)")
    parser.add_argument("--delay", type=float, default=0.0, help="service time per request, s")
    parser.add_argument("--partials", type=int, default=0, help="PARTIAL replies per request")
    parser.add_argument("--worker-id", default=None, help="id reported to the broker")
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        # a string default goes through type=, so a bad variable
        # gets argparse's clear error rather than a traceback
        default=env("MOLE_HEARTBEAT_INTERVAL") or str(DEFAULT_HEARTBEAT_INTERVAL_S),
        help="seconds; must match the broker's (MOLE_HEARTBEAT_INTERVAL)",
    )
    parser.add_argument(
        "--liveness",
        type=int,
        default=env("MOLE_HEARTBEAT_LIVENESS") or str(DEFAULT_LIVENESS),
        help="heartbeats missed before the broker counts as lost (MOLE_HEARTBEAT_LIVENESS)",
    )
    parser.add_argument(
        "--reconnect-max",
        type=float,
        default=8.0,
        help="longest back-off between reconnection attempts, s",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.slots < 1 or args.delay < 0 or args.partials < 0:
        parser.error("--slots must be >= 1, --delay and --partials >= 0")
    if not args.heartbeat_interval > 0 or args.liveness < 1:
        parser.error("--heartbeat-interval must be > 0 and --liveness >= 1")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from mole.worker.runtime import default_worker_id, stop_on_signals

    worker_id = args.worker_id or default_worker_id(args.service)
    handler = EchoHandler(
        slots=args.slots, delay_s=args.delay, partials=args.partials, worker_id=worker_id
    )
    try:  # CURVE keys from MOLE_CURVE_SERVER_KEY / MOLE_CURVE_SECRET_KEY; None: CURVE off
        curve = CurveKeys.from_env()
    except CurveKeyError as err:
        print(f"echo worker: {err}", file=sys.stderr)
        return 2
    runtime = WorkerRuntime(
        args.broker,
        args.service,
        handler,
        worker_id=worker_id,
        heartbeat_interval=args.heartbeat_interval,
        liveness=args.liveness,
        reconnect_max=args.reconnect_max,
        curve=curve,
    )
    stop_on_signals(runtime)
    log.info(
        "echo worker %s (SCAFFOLDING) serving %r via %s, %d slot(s)",
        worker_id,
        args.service,
        args.broker,
        handler.slots,
    )
    runtime.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
