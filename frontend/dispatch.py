"""The dispatcher seam: how /classify gets an expert's answer once gating chose the expert.

Two implementations behind one small asynchronous interface:

* :class:`BrokerDispatcher` (``SERVICE_MODE=distributed``, the default): one broker
  request to the service named by the expert's ``base_model_key``, through one
  ``protocol.AsyncClient`` per serving process. The client is made on the event loop that
  serves (the ASGI lifespan start-up calls :meth:`BrokerDispatcher.start`; the first
  request does it otherwise), so it never exists in a gunicorn master and never crosses a
  fork. Many requests share its one socket, each awaiting its own future.
* :class:`MonolithicDispatcher` (``SERVICE_MODE=monolithic``): the in-process resident
  model pool (``worker.engine.pool.ModelPool``), imported lazily so the distributed
  frontend never imports torch. Inference blocks, so it runs in a thread, off the loop.

Both raise ``protocol.errors.RequestError`` subclasses for failures, so resources map
one vocabulary (``frontend.errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

from mole.protocol.aio import AsyncClient
from mole.protocol.bus_transport import choose_transport
from mole.protocol.curve import CurveKeys
from mole.protocol.errors import InternalError, RequestError, UnknownWorker
from mole.protocol.registry import ExpertSpec


class Dispatcher(Protocol):
    """What the resources need from the serving side."""

    mode: str

    async def start(self) -> None:
        """Connect now, on the running loop (optional; the first request does it too)."""

    async def dispatch(self, expert: ExpertSpec, payload: dict[str, Any], timeout: float) -> Any:
        """The worker's reply payload for ``payload``, within ``timeout`` seconds.

        Raises:
            protocol.errors.RequestError: the request's final outcome was an error.
        """

    async def status(self, timeout: float) -> dict[str, Any]:
        """The serving side's status (``mmi.status`` shape); raises when unreachable."""

    async def manage(self, service: str, worker_id: str, timeout: float) -> dict[str, Any]:
        """The broker's report for ``mmi.drain``/``mmi.resume`` (``service``) of one worker.

        Raises:
            protocol.errors.RequestError: ``forbidden`` when the broker refuses this
                process's key, ``unknown_worker``, or the bus's own errors.
        """

    async def close(self) -> None: ...


ClientFactory = Callable[[str], AsyncClient]


class BrokerDispatcher:
    """Dispatch through the Majordomo broker, one ``AsyncClient`` per process and loop."""

    mode = "distributed"

    def __init__(
        self,
        broker_url: str,
        *,
        client_factory: ClientFactory | None = None,
        default_timeout: float = 30.0,
    ) -> None:
        self.broker_url = broker_url
        self._factory = client_factory
        self._default_timeout = default_timeout
        self._client: AsyncClient | None = None
        self._owner: tuple[int, asyncio.AbstractEventLoop] | None = None
        # CURVE keys from MOLE_CURVE_SERVER_KEY / MOLE_CURVE_SECRET_KEY (None: CURVE off),
        # read here so a bad key file fails at start-up rather than on the first request
        self._curve = CurveKeys.from_env() if client_factory is None else None
        # the bus transport (MOLE_BUS_TRANSPORT: native or zmq; protocol.bus_transport),
        # chosen here so a bad name fails at start-up too
        self._transport = choose_transport(None, broker_url, curve=self._curve is not None)

    def _make(self) -> AsyncClient:
        if self._factory is not None:
            return self._factory(self.broker_url)
        return AsyncClient(
            self.broker_url,
            timeout=self._default_timeout,
            curve=self._curve,
            transport=self._transport,
        )

    def client(self) -> AsyncClient:
        """This process's client on the running loop, made on first use.

        An AsyncClient belongs to the loop that first used it; a different loop (a test
        harness running each call on its own loop) or a forked child gets a new one.
        """
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._client is None or self._owner != owner:
            self._retire()
            self._client = self._make()
            self._owner = owner
        return self._client

    def _retire(self) -> None:
        """Hand a client of another loop of this process back to that loop to be closed
        (a client is only ever touched from its own loop)."""
        old, owner = self._client, self._owner
        self._client = self._owner = None
        if old is None or owner is None or owner[0] != os.getpid():
            return  # none, or inherited through fork: the parent's to close
        # RuntimeError: that loop is closed, and the client goes with garbage collection
        with contextlib.suppress(RuntimeError):
            owner[1].call_soon_threadsafe(lambda: owner[1].create_task(old.close()))

    async def start(self) -> None:
        await self.client().start()

    async def dispatch(self, expert: ExpertSpec, payload: dict[str, Any], timeout: float) -> Any:
        return await self.client().request(expert.base_model_key, payload, timeout=timeout)

    async def status(self, timeout: float) -> dict[str, Any]:
        status: dict[str, Any] = await self.client().status(timeout=timeout)
        return status

    async def manage(self, service: str, worker_id: str, timeout: float) -> dict[str, Any]:
        report: dict[str, Any] = await self.client().request(
            service, {"worker": worker_id}, timeout=timeout
        )
        return report

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._owner is not None and self._owner[0] == os.getpid():
            await client.close()
        self._owner = None


class MonolithicDispatcher:
    """Dispatch to the in-process model pool (no broker). The pool is built on first use.

    The pool answers ``deadline_exceeded`` for a request still waiting (for a model to
    load, or for the model to be free) when its deadline passes; a computation that has
    started runs to its end. Every call into the pool runs in a thread: loading and
    inference take seconds, and the event loop must go on serving meanwhile.
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

    async def start(self) -> None:
        return None

    def _infer(self, key: str, payload: dict[str, Any], timeout: float) -> Any:
        try:
            return self.pool().infer(key, payload, timeout=timeout)
        except RequestError:
            raise
        except Exception as err:  # a model that cannot load: one vocabulary for callers
            raise InternalError(f"{type(err).__name__}: {err}") from err

    async def dispatch(self, expert: ExpertSpec, payload: dict[str, Any], timeout: float) -> Any:
        return await asyncio.to_thread(self._infer, expert.base_model_key, payload, timeout)

    def _status(self) -> dict[str, Any]:
        pool = self.pool()
        resident = list(getattr(pool, "resident", []))
        return {
            "broker": None,
            "services": {key: {"workers": 1} for key in resident},
            "workers": [{"id": f"monolithic-{os.getpid()}", "service": key} for key in resident],
        }

    async def status(self, timeout: float) -> dict[str, Any]:
        return await asyncio.to_thread(self._status)

    async def manage(self, service: str, worker_id: str, timeout: float) -> dict[str, Any]:
        raise UnknownWorker(
            f"no worker {worker_id!r} to drain or resume: the frontend runs monolithic "
            "(SERVICE_MODE=monolithic), with its models in-process and no broker"
        )

    def _close(self) -> None:
        with self._lock:
            if self._pool is not None and hasattr(self._pool, "close"):
                self._pool.close()
            self._pool = None

    async def close(self) -> None:
        await asyncio.to_thread(self._close)


def dispatcher_for(mode: str, broker_url: str, default_timeout: float = 30.0) -> Dispatcher:
    if mode == "monolithic":
        return MonolithicDispatcher()
    return BrokerDispatcher(broker_url, default_timeout=default_timeout)
