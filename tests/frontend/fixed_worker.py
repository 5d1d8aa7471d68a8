"""TEST DOUBLE for the LLM expert worker: answers every classification with a fixed label.

It runs under the real worker runtime (``worker.runtime.WorkerRuntime``) against the real
broker, so the frontend's whole dispatch path is exercised; only the model is replaced.
It checks the payload as a real expert worker does (task and adapter known for its base
model, non-empty text) and answers ``bad_request`` otherwise. Its answer is always the
first label of the task's label set, with made-up probabilities: it classifies nothing.

Test hooks, read from the payload's ``text``:

* ``"__error:<code>"`` anywhere in the text: answer with that bus error code;
* ``"__sleep:<seconds>"``: wait that long first (deadline tests);
* ``"__rendezvous:<n>"``: answer only once ``n`` requests with this hook are being served
  at the same time, else ``internal`` after 10 s: a test that sends ``n`` of them in one
  call learns whether the caller really had them in flight together, without timing it.

Run as a process (one runtime per ``--service``)::

    python tests/frontend/fixed_worker.py --broker tcp://127.0.0.1:5555 \
        --service llama-2-7b-hf --service qwen2.5-7b-instruct [--delay 0.02]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mole.protocol.registry import ExpertsRegistry, load_registry
from mole.worker.handler import Handler, Responder, WorkRequest

_ERROR_HOOK = re.compile(r"__error:([a-z_]+)")
_SLEEP_HOOK = re.compile(r"__sleep:([0-9.]+)")
_RENDEZVOUS_HOOK = re.compile(r"__rendezvous:([0-9]+)")
_RENDEZVOUS_WAIT_S = 10.0
_rendezvous: dict[int, threading.Barrier] = {}
_rendezvous_lock = threading.Lock()


def _meet(parties: int) -> bool:
    """Wait until ``parties`` requests meet here; False if they did not within the wait."""
    with _rendezvous_lock:
        barrier = _rendezvous.setdefault(parties, threading.Barrier(parties))
    try:
        barrier.wait(_RENDEZVOUS_WAIT_S)
    except threading.BrokenBarrierError:
        with _rendezvous_lock:
            _rendezvous.pop(parties, None)  # the next test starts with a fresh one
        return False
    return True


class FixedAnswerHandler(Handler):
    """Answers ``label_set[0]`` for every valid request. A test double, not an expert."""

    def __init__(
        self,
        registry: ExpertsRegistry,
        service: str,
        *,
        delay_s: float = 0.0,
        slots: int = 8,
        worker_id: str = "fixed",
    ) -> None:
        self.slots = slots
        self.delay_s = delay_s
        self.service = service
        self.worker_id = worker_id
        self.experts = {
            (e.task_key, e.language.code): e for e in registry.experts_for_base_model(service)
        }
        self._pool: ThreadPoolExecutor | None = None

    def metadata(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "service": self.service,
            "slots": self.slots,
            "tasks": sorted({t for t, _ in self.experts}),
            "tiny_model": True,
            "test_double": True,
        }

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="fixed")

    def submit(self, request: WorkRequest, responder: Responder) -> None:
        """Answer at once when there is nothing to wait for (the runtime sends an inline
        answer straight away, as the legacy benchmark worker answers in its request
        thread); a service time or a ``__sleep`` hook waits on a pool thread instead."""
        assert self._pool is not None
        p = request.payload
        text = p.get("text") if isinstance(p, dict) else None
        waits = isinstance(text, str) and ("__sleep:" in text or "__rendezvous:" in text)
        if self.delay_s <= 0 and not waits:
            self._answer(request, responder)
        else:
            self._pool.submit(self._answer, request, responder)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _answer(self, request: WorkRequest, responder: Responder) -> None:
        started = time.monotonic()
        p = request.payload
        if not isinstance(p, dict) or not isinstance(p.get("text"), str) or not p["text"]:
            responder.error("bad_request", "text: must be a non-empty string")
            return
        expert = self.experts.get((p.get("task"), p.get("language")))
        if expert is None:
            responder.error(
                "bad_request",
                f"task/language {p.get('task')}/"
                f"{p.get('language')} is not served by {self.service}",
            )
            return
        if p.get("adapter") != expert.adapter_name:
            responder.error("bad_request", f"adapter: expected {expert.adapter_name}")
            return
        hook = _SLEEP_HOOK.search(p["text"])
        delay = float(hook.group(1)) if hook else self.delay_s
        if delay > 0:
            time.sleep(delay)
        hook = _RENDEZVOUS_HOOK.search(p["text"])
        if hook and not _meet(int(hook.group(1))):
            responder.error(
                "internal", f"rendezvous of {hook.group(1)} requests not reached: not concurrent"
            )
            return
        hook = _ERROR_HOOK.search(p["text"])
        if hook:
            responder.error(hook.group(1), f"test double asked to fail with {hook.group(1)}")
            return
        labels = list(expert.label_set)
        options = p.get("options") or {}
        reply: dict[str, Any] = {
            "label": labels[0],
            "confidence": 0.5,
            "model": self.service,
            "adapter": expert.adapter_name,
            "worker_id": self.worker_id,
            "tiny_model": True,
            "truncated": False,
            "input_tokens": len(p["text"].split()),
            "timings": {
                "queue_ms": 0.0,
                "inference_ms": round((time.monotonic() - started) * 1000, 3),
            },
        }
        if expert.kind == "extraction":
            entities = [
                {
                    "text": p["text"][:4],
                    "label": labels[0],
                    "start": 0,
                    "end": min(4, len(p["text"])),
                }
            ]
            reply["entities"] = entities
            reply["result"] = json.dumps(entities)
        else:
            reply["result"] = labels[0]
        if options.get("return_probabilities"):
            rest = (1.0 - 0.5) / max(1, len(labels) - 1)
            reply["probabilities"] = {
                lab: (0.5 if i == 0 else rest) for i, lab in enumerate(labels)
            }
        if options.get("return_raw_response"):
            reply["raw_response"] = f" {labels[0]}"
        responder.final(reply)


def main(argv: list[str] | None = None) -> int:
    from mole.worker.runtime import WorkerRuntime

    parser = argparse.ArgumentParser(description="fixed-answer TEST DOUBLE worker")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--service", action="append", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--registry", default=None)
    parser.add_argument("--id-prefix", default="fixed", help="worker ids are PREFIX-N")
    parser.add_argument("--heartbeat-interval", type=float, default=2.5)
    args = parser.parse_args(argv)
    registry = load_registry(args.registry)
    runtimes = [
        WorkerRuntime(
            args.broker,
            service,
            FixedAnswerHandler(
                registry,
                service,
                delay_s=args.delay,
                slots=args.slots,
                worker_id=f"{args.id_prefix}-{i}",
            ),
            worker_id=f"{args.id_prefix}-{i}",
            heartbeat_interval=args.heartbeat_interval,
        )
        for i, service in enumerate(args.service)
    ]
    for runtime in runtimes:
        runtime.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for runtime in runtimes:
        runtime.stop(timeout=2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
