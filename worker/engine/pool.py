"""Resident engines for the single-machine mode, with least-recently-used eviction.

The monolithic frontend serves every base model in one process; GPU memory holds only a
few at a time. :class:`ModelPool` loads an engine on first use, keeps at most
``max_resident`` of them, and evicts (frees) the least recently used one to make room.
Loads of different models may proceed in parallel; two callers asking for the same model
wait for one load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from mole.protocol.registry import ExpertsRegistry, load_registry
from mole.worker.engine.engine import Engine
from mole.worker.engine.errors import EngineClosed
from mole.worker.engine.settings import EngineSettings

log = logging.getLogger("mole.worker.pool")


class ModelPool:
    """An LRU of loaded :class:`Engine` objects keyed by base_model_key. Thread-safe.

    Args:
        max_resident: most engines held at once (>= 1).
        registry: the experts registry (default: ``load_registry()``).
        settings: how engines load (default: from the environment).
        loader: builds an engine for a key (default: :meth:`Engine.load`); injectable for
            tests of the eviction policy.
    """

    def __init__(
        self,
        max_resident: int = 1,
        *,
        registry: ExpertsRegistry | None = None,
        settings: EngineSettings | None = None,
        loader: Callable[[str], Engine] | None = None,
        worker_id: str = "pool",
    ) -> None:
        if max_resident < 1:
            raise ValueError("max_resident must be at least 1")
        self.max_resident = max_resident
        self.registry = registry or load_registry()
        self.settings = settings or EngineSettings()
        self._loader = loader or (
            lambda key: Engine.load(key, self.registry, self.settings, worker_id)
        )
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.loads = 0
        self.evictions = 0

    @property
    def resident(self) -> list[str]:
        """Resident keys, least recently used first."""
        with self._lock:
            return list(self._engines)

    def get(self, base_model_key: str) -> Engine:
        """The engine for ``base_model_key``, loading it (and evicting the LRU) if needed.

        Raises:
            ModelLoadError: the model cannot be loaded.
        """
        with self._lock:
            engine = self._engines.get(base_model_key)
            if engine is not None:
                self._engines.move_to_end(base_model_key)
                return engine
            key_lock = self._loading.setdefault(base_model_key, threading.Lock())
        with key_lock:
            with self._lock:  # someone else may have loaded it while we waited
                engine = self._engines.get(base_model_key)
                if engine is not None:
                    self._engines.move_to_end(base_model_key)
                    return engine
                victims = self._pop_over(self.max_resident - 1)
            self._close(victims)  # free memory before loading the next model
            engine = self._loader(base_model_key)
            self.loads += 1
            with self._lock:
                victims = self._pop_over(self.max_resident - 1)
                self._engines[base_model_key] = engine
                self._loading.pop(base_model_key, None)
            self._close(victims)
            return engine

    def _pop_over(self, keep: int) -> list[tuple[str, Engine]]:
        """Remove least recently used engines until ``keep`` remain (call under the lock)."""
        victims = []
        while len(self._engines) > keep:
            victims.append(self._engines.popitem(last=False))
            self.evictions += 1
        return victims

    def _close(self, victims: list[tuple[str, Engine]]) -> None:
        for key, engine in victims:
            log.info("evicting %s (max_resident=%d)", key, self.max_resident)
            try:
                engine.close()  # waits for a forward pass in progress on it
            except Exception:
                log.exception("closing %s failed", key)

    def infer(
        self, base_model_key: str, payload: Any, request_id: str = "", timeout: float | None = None
    ) -> dict[str, Any]:
        """Classify ``payload`` with the right engine; the reply a worker would send.

        Args:
            timeout: seconds from now; a request still waiting (for a model to load or for
                the model to be free) when they run out is answered ``DeadlineExceeded``
                instead of computed. A computation already started is not cut short.

        Raises:
            DeadlineExceeded: the timeout ran out before the computation started.
            InvalidPayload: (a ``protocol.errors.BadRequest``) naming the field at fault.
            ModelLoadError: the model cannot be loaded.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in range(3):
            engine = self.get(base_model_key)
            try:
                return engine.infer(payload, request_id, deadline=deadline)
            except EngineClosed:
                continue  # evicted between get() and infer(): load it again
        raise EngineClosed(f"{base_model_key} was evicted repeatedly while in use")

    def close(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
        for engine in engines:
            engine.close()
