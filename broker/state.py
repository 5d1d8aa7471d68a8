"""The broker's bookkeeping records: a request, a worker, a service.

Plain ``__slots__`` classes rather than dataclasses: the broker creates one
:class:`Request` per message on its hot path, and these stay small and cheap. The broker
core (``broker.engine``) is the only code that mutates them; :mod:`broker.status` reads them.

Structures that keep dispatch O(1) in the number of services and workers:

* ``Service.available`` is an insertion-ordered dict of the workers with a free slot:
  dispatch pops the first and, if it still has a free slot, puts it back at the end
  (round robin weighted by slots).
* ``Service.queue`` is an insertion-ordered dict of waiting requests keyed by ticket:
  popping the oldest, putting a re-dispatched request back at the front, and removing one
  whose deadline passed are all O(1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from mole.broker.header import RequestFields
from mole.protocol.mdp import Framing, request_head


class Request:
    """One client request, from its arrival until its one final answer.

    ``body`` holds the frames after the service frame, as received (the payload frames
    stay ``zmq.Frame`` objects, forwarded without copying). ``header`` holds the fields
    of our request header (``broker.header``), or None for an opaque RFC 18 body.
    ``framing`` is how the client framed it (MDP/0.1, 0.2, 0.2 behind a delimiter): its
    answers go out the same way.
    """

    __slots__ = (
        "body",
        "client",
        "client_key",
        "deadline",
        "dispatches",
        "done",
        "framing",
        "header",
        "holders",
        "lost",
        "received_at",
        "request_id",
        "service",
        "ticket",
        "worker",
    )

    def __init__(
        self,
        ticket: bytes,
        client: bytes,
        service: Service,
        request_id: str | None,
        header: RequestFields | None,
        body: list[Any],
        deadline: float,
        now: float,
        framing: Framing = Framing.MDP02,
    ) -> None:
        self.ticket = ticket
        self.framing = framing
        self.client = client
        self.service = service
        self.request_id = request_id
        self.header = header
        self.body = body
        self.deadline = deadline
        self.dispatches = 0
        self.worker: Worker | None = None  # the worker of the latest attempt
        #: every worker that holds this request now (more than one after a per-attempt
        #: timeout gave it to another worker while the first may still answer)
        self.holders: list[Worker] = []
        self.done = False  # answered (by the worker or the broker): later replies are dropped
        self.lost = False  # was on a worker that was purged
        self.received_at = now
        self.client_key: str | None = None  # the client's CURVE key, when keys are checked


class Worker:
    """A registered worker: one ROUTER peer that sent READY for one service."""

    __slots__ = (
        "address",
        "alive",
        "draining",
        "framing",
        "identity",
        "in_flight",
        "key",
        "last_seen",
        "metadata",
        "registered_at",
        "request_head",
        "served",
        "service",
        "slots",
        "suspect",
        "timeouts",
        "worker_id",
    )

    def __init__(
        self,
        identity: bytes,
        service: Service,
        slots: int,
        metadata: dict[str, Any],
        address: str | None,
        now: float,
        framing: Framing = Framing.MDP02,
    ) -> None:
        self.identity = identity
        self.framing = framing  # how the worker frames messages; what it is sent matches
        #: the frames before the ticket of each REQUEST it is sent (mdp.request_head)
        self.request_head = request_head(framing)
        self.service = service
        self.slots = slots
        self.in_flight: dict[bytes, Request] = {}
        self.served = 0
        self.last_seen = now
        self.metadata = metadata
        self.address = address
        wid = metadata.get("worker_id")
        self.worker_id = str(wid) if wid not in (None, "") else identity.hex()
        self.registered_at = now
        self.alive = True
        #: per-attempt timeouts in a row; at ``suspect_after`` the worker is suspect: it gets
        #: no new work until it answers again (or is purged)
        self.timeouts = 0
        self.suspect = False
        #: drained by the operator (``mmi.drain``): no new work, its requests finish
        self.draining = False
        self.key: str | None = None  # the CURVE public key it registered with, if any


class Service:
    """A service name (a base_model_key), its workers and its waiting requests."""

    __slots__ = (
        "attempt_timeout",
        "available",
        "errors",
        "name",
        "name_bytes",
        "queue",
        "served",
        "workers",
    )

    def __init__(self, name_bytes: bytes) -> None:
        self.name_bytes = name_bytes
        self.name = name_bytes.decode("utf-8")
        self.workers: dict[bytes, Worker] = {}
        self.available: OrderedDict[bytes, Worker] = OrderedDict()
        self.queue: OrderedDict[bytes, Request] = OrderedDict()
        self.served = 0
        self.errors = 0
        #: seconds an attempt may take before the request also goes to another worker;
        #: None: derived from each request's deadline (see broker.engine)
        self.attempt_timeout: float | None = None

    def idle(self) -> bool:
        """True when nothing refers to this service and no worker ever served it.

        Such entries are dropped, so clients asking for names nobody serves cannot grow
        the broker's tables without bound; their errors stay in the global counters.
        """
        return not self.workers and not self.queue and self.served == 0

    def slots(self) -> int:
        return sum(w.slots for w in self.workers.values())

    def in_flight(self) -> int:
        """Requests its workers hold now (counted when asked: status only needs it)."""
        return sum(len(w.in_flight) for w in self.workers.values())


def worker_status(worker: Worker, now: float) -> dict[str, Any]:
    """One worker's row of ``mmi.status``."""
    return {
        "id": worker.worker_id,
        "identity": worker.identity.hex(),
        "service": worker.service.name,
        "address": worker.address,
        "slots": worker.slots,
        "in_flight": len(worker.in_flight),
        "served": worker.served,
        "last_heartbeat_s": round(max(0.0, now - worker.last_seen), 3),
        "registered_s": round(max(0.0, now - worker.registered_at), 3),
        "metadata": worker.metadata,
        "curve_key": worker.key,
        "protocol": worker.framing.name,
        "suspect": worker.suspect,
        "draining": worker.draining,
        "attempt_timeouts": worker.timeouts,
    }


def service_status(service: Service) -> dict[str, Any]:
    """One service's row of ``mmi.status``."""
    return {
        "workers": len(service.workers),
        "slots": service.slots(),
        "in_flight": service.in_flight(),
        "queue_depth": len(service.queue),
        "served": service.served,
        "errors": service.errors,
    }
