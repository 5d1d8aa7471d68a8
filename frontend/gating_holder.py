"""Holds this process's gating pipeline: loads it off the request path, swaps it on reload.

``/health/ready`` answers 503 until the pipeline is loaded, so gunicorn workers can start
accepting connections at once while the models load in a background thread.

A registry reload is validated in full before anything changes: the new file is parsed,
a new pipeline is built on it, and only then swapped in; on any failure the old registry
and pipeline stay in force. Because each gunicorn worker process holds its own pipeline,
a reload also bumps a stamp file in the data directory; the other processes notice it
(at most one ``stat`` a second) and rebuild from the same file in a background thread,
serving with the old pipeline until the new one is built (building takes seconds, and
``get`` is called on the event loop).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mole.protocol.registry import ExpertsRegistry, load_registry

log = logging.getLogger("mole.frontend.gating")

Loader = Callable[[ExpertsRegistry], Any]


def default_loader(registry: ExpertsRegistry) -> Any:
    from mole.gating import GatingPipeline

    pipeline = GatingPipeline.load(registry=registry)
    # requests run on the event loop: Lingua's short-text models take seconds to load,
    # so the first short text loads them in a thread instead of stalling every request
    pipeline.detector.defer_second_opinion_loading()
    return pipeline


class NotReady(RuntimeError):
    """Gating is still loading (or failed to load); the message says which."""


class GatingHolder:
    def __init__(
        self,
        *,
        registry_path: Path | None = None,
        loader: Loader = default_loader,
        stamp_path: Path | None = None,
        check_interval_s: float = 1.0,
    ) -> None:
        self.registry_path = registry_path
        self._loader = loader
        self._stamp_path = stamp_path
        self._check_interval = check_interval_s
        self._lock = threading.Lock()
        self._pipeline: Any = None
        self._registry: ExpertsRegistry | None = None
        self._error: str | None = None
        self._loading = False
        self._stamp_seen = self._read_stamp()
        self._next_check = 0.0

    @classmethod
    def loaded(cls, pipeline: Any, registry: ExpertsRegistry, **kw: Any) -> GatingHolder:
        """A holder around an already-built pipeline (tests, monolithic tools)."""
        holder = cls(registry_path=registry.path, **kw)
        holder._pipeline, holder._registry = pipeline, registry
        return holder

    # -- loading -------------------------------------------------------------------------

    def _build(self) -> tuple[Any, ExpertsRegistry]:
        registry = load_registry(self.registry_path)
        return self._loader(registry), registry

    def load(self) -> None:
        """Load now, in this thread. Failures are kept for ``/health/ready``."""
        self._loading = True
        started = time.monotonic()
        try:
            pipeline, registry = self._build()
        except Exception as err:
            log.exception("gating failed to load")
            with self._lock:
                self._error = f"{type(err).__name__}: {err}"
        else:
            with self._lock:
                self._pipeline, self._registry, self._error = pipeline, registry, None
            log.info(
                "gating loaded in %.2f s (%d tasks)",
                time.monotonic() - started,
                len(registry.tasks),
            )
        finally:
            self._loading = False

    def start(self) -> threading.Thread:
        """Load in a background thread (called in each worker process after fork)."""
        self._loading = True
        thread = threading.Thread(target=self.load, name="gating-load", daemon=True)
        thread.start()
        return thread

    # -- use -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._pipeline is not None

    def state(self) -> dict[str, Any]:
        reg = self._registry
        if self._pipeline is not None and reg is not None:
            return {
                "ready": True,
                "tasks": len(reg.tasks),
                "languages": len(reg.languages),
                "domains": len(reg.domains),
            }
        if self._error:
            return {"ready": False, "detail": f"gating failed to load: {self._error}"}
        return {"ready": False, "detail": "gating is loading"}

    def get(self) -> tuple[Any, ExpertsRegistry]:
        """The current (pipeline, registry).

        Raises:
            NotReady: still loading or failed.
        """
        self._maybe_follow_reload()
        pipeline, registry = self._pipeline, self._registry
        if pipeline is None or registry is None:  # both are set together
            raise NotReady(self.state()["detail"])
        return pipeline, registry

    @property
    def registry(self) -> ExpertsRegistry:
        return self.get()[1]

    # -- reload --------------------------------------------------------------------------

    def reload(self) -> ExpertsRegistry:
        """Validate the registry file, build a pipeline on it, then swap; else keep the old.

        Raises:
            RegistryError: the file is invalid (the message names the key at fault).
            Exception: building the pipeline failed (old one kept).
        """
        pipeline, registry = self._build()
        with self._lock:
            self._pipeline, self._registry, self._error = pipeline, registry, None
        self._bump_stamp()
        return registry

    def _read_stamp(self) -> float | None:
        if self._stamp_path is None:
            return None
        try:
            return self._stamp_path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _bump_stamp(self) -> None:
        if self._stamp_path is None:
            return
        self._stamp_path.parent.mkdir(parents=True, exist_ok=True)
        self._stamp_path.write_text(str(time.time_ns()))
        self._stamp_seen = self._read_stamp()

    def _maybe_follow_reload(self) -> None:
        if self._stamp_path is None:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self._check_interval
        stamp = self._read_stamp()
        if stamp == self._stamp_seen:
            return
        self._stamp_seen = stamp
        threading.Thread(target=self._follow, name="gating-follow", daemon=True).start()

    def _follow(self) -> None:
        try:
            pipeline, registry = self._build()
        except Exception as err:  # keep serving the old one
            log.error("registry reload signalled by another process failed: %s", err)
            return
        with self._lock:
            self._pipeline, self._registry = pipeline, registry
        log.info("followed a registry reload from another worker process (pid %d)", os.getpid())
