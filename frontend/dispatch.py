"""The dispatcher seam: how /classify gets an expert's answer once gating chose the expert.

Two implementations behind one small interface:

* :class:`BrokerDispatcher` (``SERVICE_MODE=distributed``, the default): one broker
  request to the service named by the expert's ``base_model_key``, through a
  ``protocol.threaded.PerThreadClient`` (each gunicorn thread sends on and waits on a
  socket of its own, with no I/O-thread hand-off), created lazily in each gunicorn
  worker process (after fork, never in the master).
* :class:`MonolithicDispatcher` (``SERVICE_MODE=monolithic``): the in-process resident
  model pool (``worker.engine.pool.ModelPool``), imported lazily so the distributed
  frontend never imports torch.

Both raise ``protocol.errors.RequestError`` subclasses for failures, so resources map
one vocabulary (``frontend.errors``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

from mole.protocol.errors import InternalError, RequestError
from mole.protocol.registry import ExpertSpec


class Dispatcher(Protocol):
    """What the resources need from the serving side."""

    mode: str

    def dispatch(self, expert: ExpertSpec, payload: dict[str, Any], timeout: float) -> Any:
        """The worker's reply payload for ``payload``, within ``timeout`` seconds.

        Raises:
            protocol.errors.RequestError: the request's final outcome was an error.
        """

    def status(self, timeout: float) -> dict[str, Any]:
        """The serving side's status (``mmi.status`` shape); raises when unreachable."""

    def close(self) -> None: ...


class BrokerDispatcher:
    """Dispatch through the Majordomo broker, one ``PerThreadClient`` per process."""

    mode = "distributed"

    def __init__(
        self,
        broker_url: str,
        *,
        client_factory: Callable[[str], Any] | None = None,
        default_timeout: float = 30.0,
    ) -> None:
        self.broker_url = broker_url
        self._factory = client_factory
        self._default_timeout = default_timeout
        self._client: Any = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        # CURVE keys from MOLE_CURVE_SERVER_KEY / MOLE_CURVE_SECRET_KEY (None: CURVE off),
        # read here so a bad key file fails at start-up rather than on the first request
        from mole.protocol.curve import CurveKeys

        self._curve = CurveKeys.from_env() if client_factory is None else None

    def client(self) -> Any:
        """This process's client, made on first use (so never in a gunicorn master)."""
        client = self._client
        if client is not None and self._pid == os.getpid():
            return client
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                if self._factory is not None:
                    self._client = self._factory(self.broker_url)
                else:
                    from mole.protocol.threaded import PerThreadClient

                    self._client = PerThreadClient(
                        self.broker_url, timeout=self._default_timeout, curve=self._curve
                    )
                self._pid = os.getpid()
            return self._client

    def dispatch(self, expert: ExpertSpec, payload: dict[str, Any], timeout: float) -> Any:
        return self.client().request(expert.base_model_key, payload, timeout=timeout)

    def status(self, timeout: float) -> dict[str, Any]:
        return self.client().status(timeout=timeout)

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None


class MonolithicDispatcher:
    """Dispatch to the in-process model pool (no broker). The pool is built on first use.

    The pool answers ``deadline_exceeded`` for a request still waiting (for a model to
    load, or for the model to be free) when its deadline passes; a computation that has
    started runs to its end.
    """

    mode = "monolithic"

    def __init__(self, pool_factory: Callable[[], Any] | None = None) -> None:
        self._factory = pool_factory
        self._pool: Any = None
        self._lock = threading.Lock()

    def pool(self) -> Any:
        with self._lock:
            if self._pool is None:
                if self._factory is not None:
                    self._pool = self._factory()
                else:
                    from mole.worker.engine.pool import ModelPool  # torch: imported only here

                    max_resident = int(os.environ.get("MOLE_POOL_MAX_RESIDENT", "1"))
                    self._pool = ModelPool(
                        max_resident=max_resident, worker_id=f"monolithic-{os.getpid()}"
                    )
            return self._pool

    def dispatch(self, expert: ExpertSpec, payload: dict[str, Any], timeout: float) -> Any:
        try:
            return self.pool().infer(expert.base_model_key, payload, timeout=timeout)
        except RequestError:
            raise
        except Exception as err:  # a model that cannot load: one vocabulary for callers
            raise InternalError(f"{type(err).__name__}: {err}") from err

    def status(self, timeout: float) -> dict[str, Any]:
        pool = self.pool()
        resident = list(getattr(pool, "resident", []))
        return {
            "broker": None,
            "services": {key: {"workers": 1} for key in resident},
            "workers": [{"id": f"monolithic-{os.getpid()}", "service": key} for key in resident],
        }

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and hasattr(self._pool, "close"):
                self._pool.close()
            self._pool = None


def dispatcher_for(mode: str, broker_url: str, default_timeout: float = 30.0) -> Dispatcher:
    if mode == "monolithic":
        return MonolithicDispatcher()
    return BrokerDispatcher(broker_url, default_timeout=default_timeout)
