"""The worker's Handler: dynamic batching of requests in an inference thread.

``submit`` only enqueues, so the runtime's socket thread (and its heartbeats) never waits
for the model. The inference thread takes the first waiting request, waits up to
``batch_wait_ms`` for company (or until ``max_batch`` requests are there), drops requests
whose deadline has passed (``deadline_exceeded``), validates each payload on its own
(``bad_request`` naming the field), and runs the rest in one forward pass, adapters and
tasks mixed. Each request gets exactly one answer, whatever happens to its batch-mates.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVarTuple

from mole.protocol.errors import ErrorCode, RequestError
from mole.worker.engine.engine import Engine, Job
from mole.worker.handler import Handler, Responder, WorkRequest
from mole.worker.metrics import Computed, WorkerMetrics

Args = TypeVarTuple("Args")

log = logging.getLogger("mole.worker.batching")


class _Stop:
    """The inference thread's signal to finish (a class, so the queue's items narrow)."""


_STOP = _Stop()
#: a request waiting for the inference thread, with where its answer goes
_Pending = tuple[WorkRequest, Responder]


class BatchingHandler(Handler):
    """Serves one :class:`Engine` through the worker runtime with dynamic batching.

    Args:
        engine: the loaded engine.
        max_batch: most requests per forward pass (default: the engine's setting).
        batch_wait_ms: how long a lone request waits for company (default: engine's).
        slots: requests the broker may give at once (default: twice ``max_batch``, so the
            next batch is queued while one computes).
        metrics: where each computed batch is reported (``mole worker --metrics-port``);
            None reports nowhere.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int | None = None,
        batch_wait_ms: float | None = None,
        slots: int | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_batch = max(1, max_batch or engine.settings.max_batch)
        self.batch_wait_s = (
            engine.settings.batch_wait_ms if batch_wait_ms is None else batch_wait_ms
        ) / 1000.0
        self.slots = slots or 2 * self.max_batch
        self._queue: queue.Queue[_Pending | _Stop] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches = 0  # counters, for tests and metadata
        self.served = 0
        self.largest_batch = 0

    def metadata(self) -> dict[str, Any]:
        meta = self.engine.metadata()
        meta["batch_wait_ms"] = self.batch_wait_s * 1000.0
        meta["max_batch"] = self.max_batch
        return meta

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mole-inference", daemon=True)
            self._thread.start()

    def submit(self, request: WorkRequest, responder: Responder) -> None:
        self._queue.put((request, responder))

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
            self._thread = None

    # ---- inference thread --------------------------------------------------------------
    def _collect(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch = [first]
        stop = False
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch:
            timeout = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Stop):
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if isinstance(first, _Stop):
                return
            batch, stop = self._collect(first)
            try:
                self._serve(batch)
            except Exception:
                log.exception("batch failed unexpectedly")
                for request, responder in batch:
                    _safe(
                        responder.error,
                        ErrorCode.INTERNAL,
                        f"worker failed while computing request {request.request_id}",
                    )
            if stop:
                return

    def _serve(self, batch: list[_Pending]) -> None:
        now = time.monotonic()
        jobs: list[Job] = []
        owners: list[Responder] = []
        for request, responder in batch:
            if request.expired(now):
                _safe(
                    responder.error,
                    ErrorCode.DEADLINE_EXCEEDED,
                    "deadline passed while queued at the worker; not computed",
                )
                continue
            try:
                job = self.engine.prepare(request.payload, request.request_id, request.received_at)
                job.deadline = request.deadline
            except RequestError as err:
                _safe(responder.error, err.code, err.message, err.details)
                continue
            except Exception as err:
                log.exception("preparing request %s failed", request.request_id)
                _safe(responder.error, ErrorCode.INTERNAL, f"could not prepare request: {err}")
                continue
            jobs.append(job)
            owners.append(responder)
        if not jobs:
            return
        outcomes = self.engine.run(jobs)
        if self.metrics is not None:
            done = time.monotonic()
            self.metrics.observe_batch(
                Computed(
                    job.expert.adapter_name, len(job.prompt_ids), outcome, done - job.received_at
                )
                for job, outcome in zip(jobs, outcomes, strict=True)
            )
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        for job, responder, outcome in zip(jobs, owners, outcomes, strict=True):
            if isinstance(outcome, RequestError):
                _safe(responder.error, outcome.code, outcome.message, outcome.details)
            elif isinstance(outcome, Exception):
                _safe(
                    responder.error,
                    ErrorCode.INTERNAL,
                    f"inference failed for request {job.request_id}: "
                    f"{type(outcome).__name__}: {outcome}",
                )
            else:
                self.served += 1
                _safe(responder.final, outcome)


def _safe(fn: Callable[[*Args], object], *args: *Args) -> None:
    """Answer a responder without letting a broken one stop the inference thread."""
    try:
        fn(*args)
    except Exception:
        log.exception("responder failed")
