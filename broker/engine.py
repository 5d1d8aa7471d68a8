"""The broker's core as a state machine: parsed events and the time in, messages out.

:class:`BrokerEngine` knows no sockets and reads no clock. The shell (``broker.shell``)
reads a message and hands its frames, the sender's routing id and the time to
:func:`mole.protocol.mdp.read_inbound`, which parses them and calls the engine's method
for that message with the parsed fields (no event object in between). The engine's
methods queue the messages to send; the shell takes them (:meth:`BrokerEngine.take_outgoing`)
and sends them in order, a batch at a time. Tests drive the same methods with a fake clock.

Its public methods are the whole broker:

* :meth:`BrokerEngine.on_request` -- a client REQUEST (any framing): route it to a free
  worker, queue it, answer it from MMI, or refuse it with an error reply;
* :meth:`BrokerEngine.on_reply` -- a worker's PARTIAL or FINAL;
  :meth:`BrokerEngine.on_ready`, :meth:`BrokerEngine.on_heartbeat`,
  :meth:`BrokerEngine.on_disconnect` -- its other messages
  (together :class:`mole.protocol.mdp.InboundHandler`);
* :meth:`BrokerEngine.on_unreadable` / :meth:`BrokerEngine.on_oversized` -- what the
  decoder could not read: a logged reason, and an error reply or DISCONNECT in the
  sender's protocol where it has one;
* :meth:`BrokerEngine.on_unreachable` -- a request could not be sent to its worker;
* :meth:`BrokerEngine.on_tick` -- heartbeats, expiry of silent workers, deadlines,
  per-attempt timeouts (a request also given to another worker; suspect workers),
  allow-list re-reads; :meth:`BrokerEngine.next_timer` says when it is next due and
  :meth:`BrokerEngine.take_wake_hint` when a message set an earlier timer;
* :meth:`BrokerEngine.begin_drain`, :meth:`BrokerEngine.drained`,
  :meth:`BrokerEngine.shutdown` -- stopping; :meth:`BrokerEngine.status` -- ``mmi.status``;
* :meth:`BrokerEngine.drain_worker`, :meth:`BrokerEngine.resume_worker` -- one worker out
  of service and back (``mmi.drain``, ``mmi.resume``; ``broker.management``).

What it guarantees (DESIGN.md "Broker behaviour", docs/interfaces.md): every request gets
exactly one final answer (the worker's, or an error reply with a code); a worker sees an
opaque *ticket* as the client address, so late replies and replies from purged workers are
recognised and dropped; dispatch is O(1) in the number of services and workers
(``broker.state``); every counter of queue depth, slots and in-flight requests is changed
in four methods only (:meth:`_assign`, :meth:`_release`, :meth:`_enqueue`,
:meth:`_dequeue`); every decision about CURVE keys is the admission policy's
(``broker.admission``).
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import msgpack

from mole.broker import management
from mole.broker.admission import Admission, OpenAdmission
from mole.broker.header import BAD_HEADER, RequestFields, read_request_header
from mole.broker.management import DrainRecord, ManagementError
from mole.broker.ratelog import RateLimitedLog
from mole.broker.settings import BrokerSettings, parse_service_timeouts
from mole.broker.state import Request, Service, Worker, service_status, worker_status
from mole.protocol import mdp
from mole.protocol.envelope import MAX_HEADER_BYTES, VERSION, ReplyHeader, pack
from mole.protocol.errors import ErrorCode
from mole.protocol.mdp import ClientCommand, ClientRequest, Framing, WorkerCommand

log = logging.getLogger("mole.broker")

BROKER_VERSION = "0.2.0"

#: One message to send: (routing id, frames, the request it dispatches or None). The shell
#: reports a failed send of a dispatch back through :meth:`BrokerEngine.on_unreachable`.
Outgoing = tuple[bytes, list[Any], "Request | None"]

C_HDR = mdp.CLIENT_HEADER
W_HDR = mdp.WORKER_HEADER
C_PARTIAL = mdp.CLIENT_PARTIAL
C_FINAL = mdp.CLIENT_FINAL
EMPTY = mdp.EMPTY
MMI_PREFIX = mdp.MMI_PREFIX
MDP02 = Framing.MDP02
FINAL = WorkerCommand.FINAL
PARTIAL = WorkerCommand.PARTIAL
HEARTBEAT = WorkerCommand.HEARTBEAT
READY = WorkerCommand.READY

#: How every reply header this project writes starts (``ReplyHeader.encode``: a msgpack
#: fixmap, ``{"v": 1, "id": ...}`` first). A worker reply to a request of ours that does
#: not start this way came from a plain RFC 18 worker.
_REPLY_HEADER_STARTS = frozenset(bytes([0x80 | keys]) + b"\xa1v\x01\xa2id" for keys in range(16))
#: msgpack's ``false``: a reply header without this byte cannot say ``"ok": false``, so
#: only headers holding it are decoded to count worker errors. Looked up as an int (a
#: memchr): testing a bytes needle costs a failed int conversion first, four times more.
_MSGPACK_FALSE = 0xC2
#: Counters shown in ``mmi.status`` (docs/interfaces.md), all starting at zero.
COUNTERS = (
    "requests",
    "replies",
    "malformed",
    "protocol_errors",
    "redispatched",
    "late_replies",
    "duplicates",
    "dropped_sends",
    "workers_registered",
    "workers_purged",
    "internal_errors",
    "unknown_worker_messages",
    "curve_refused",
    "curve_revoked_workers",
    "unreadable",
    "oversized",
    "bad_service_names",
    "refused_while_draining",
    "bodyless_replies",
    "partials_dropped",
    "raw_replies",
    "attempt_timeouts",
    "redispatched_after_timeout",
    "duplicate_finals_dropped",
    "workers_suspected",
    "workers_drained",
    "workers_resumed",
    "management_refused",
    "drained_ready_refused",
)
#: Shortest attempt timeout derived from a deadline (an explicit setting may be shorter).
MIN_DERIVED_ATTEMPT_TIMEOUT = 1.0


def _no_address(identity: bytes) -> str | None:
    """The default ``peer_address`` of :class:`BrokerEngine`: no address known."""
    return None


class BrokerEngine:
    """The sans-I/O Majordomo broker core (see the module docstring).

    Args:
        settings: validated broker settings.
        now: the current time (monotonic seconds) at creation.
        admission: the key policy; :class:`~broker.admission.OpenAdmission` by default.
        endpoint: shown in ``mmi.status``.
        broker_id: 8 hex digits; random by default. Tickets start with it.
        peer_address: the network address of a routing id whose message is being
            handled (asked when a worker registers; shown in ``mmi.status``); the shell
            reads it from the message, tests give a fixed one.
    """

    # Slots for the attributes the event methods read: CPython 3.11 keeps at most 30
    # attributes of an instance in its fast inline layout and turns a larger instance's
    # attributes into a dict, which made every ``self.x`` on the hot path slower (about 4%
    # of a request + reply cycle, measured). Every attribute is listed here (a new one
    # must be added, or assigning it raises AttributeError).
    __slots__ = (
        "_activity",
        "_attempts",
        "_attempts_from",
        "_deadlines",
        "_default_deadline",
        "_disconnect_when_idle",
        "_drained",
        "_draining_since",
        "_heartbeats",
        "_keys",
        "_max_deadline",
        "_pack_ticket",
        "_peer_address",
        "_releases",
        "_service_timeouts",
        "_tick",
        "_ticket_prefix",
        "_ticket_seq",
        "_warn",
        "admission",
        "broker_id",
        "by_key",
        "counters",
        "endpoint",
        "outgoing",
        "queued_total",
        "requests",
        "services",
        "settings",
        "started",
        "wake_hint",
        "workers",
    )

    def __init__(
        self,
        settings: BrokerSettings,
        now: float,
        *,
        admission: Admission | None = None,
        endpoint: str | None = None,
        broker_id: str | None = None,
        peer_address: Callable[[bytes], str | None] = _no_address,
    ) -> None:
        self.settings = settings
        self._peer_address = peer_address
        self.admission: Admission = admission or OpenAdmission()
        self._keys = self.admission.checks_keys
        self.endpoint = endpoint
        self.started = now
        self.broker_id = broker_id or os.urandom(4).hex()
        self._ticket_prefix = bytes.fromhex(self.broker_id)
        self._ticket_seq = 0
        #: a ticket is the broker id's bytes, then the 8-byte big-endian request number;
        #: packed in one call (cheaper than int.to_bytes plus a concatenation)
        self._pack_ticket = struct.Struct(f">{len(self._ticket_prefix)}sQ").pack
        self.workers: dict[bytes, Worker] = {}
        self.services: dict[str, Service] = {}
        self.requests: dict[bytes, Request] = {}  # ticket -> live (unanswered) request
        self.by_key: dict[tuple[bytes, str], Request] = {}  # (client, request id) -> request
        self.queued_total = 0
        self.counters: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
        self.counters["errors_by_code"] = {}
        self._deadlines: list[tuple[float, bytes]] = []  # heap; stale entries skipped
        self._releases: list[tuple[float, bytes, bytes]] = []  # (when, worker, ticket)
        #: per-attempt timeouts in buckets of one tick: bucket number -> [(ticket, attempt
        #: number, counted)]; cheaper than a heap on the hot path (an append per dispatch)
        self._attempts: dict[int, list[tuple[bytes, int, bool]]] = {}
        self._tick = settings.heartbeat_interval / 10
        self._attempts_from = math.floor(now / self._tick)  # the lowest bucket not yet run
        self._service_timeouts = parse_service_timeouts(settings.service_attempt_timeouts)
        self._heartbeats: deque[tuple[float, Worker]] = deque()  # sorted by due time
        self._activity: OrderedDict[bytes, Worker] = OrderedDict()  # by last message
        self._warn = RateLimitedLog(log)
        #: messages queued to send, in order; the shell takes them with take_outgoing()
        self.outgoing: list[Outgoing] = []
        #: the earliest timer set since the last :meth:`take_wake_hint` (see there)
        self.wake_hint = math.inf
        self._draining_since: float | None = None
        self._default_deadline = settings.default_deadline
        self._max_deadline = settings.max_deadline
        #: worker ids the operator drained (``mmi.drain``), kept until ``mmi.resume``
        self._drained: dict[str, DrainRecord] = {}
        #: registered drained workers to send DISCONNECT once they are idle
        self._disconnect_when_idle: dict[bytes, Worker] = {}

    def take_outgoing(self) -> list[Outgoing]:
        """The messages to send that the engine's methods queued since the last call, in
        order (and forget them).

        Why a queue rather than a list returned per call: the shell sends in batches, and a
        list per message (built, returned, copied into the batch) was 2-3% of the broker's
        cost per request.
        """
        out = self.outgoing
        self.outgoing = []
        return out

    def attach(
        self,
        admission: Admission,
        endpoint: str | None,
        peer_address: Callable[[bytes], str | None] = _no_address,
    ) -> None:
        """Use ``admission`` from now on, show ``endpoint`` in ``mmi.status``, and ask
        ``peer_address`` for the network address of a worker that registers.

        The shell calls this once its socket is bound (the CURVE key ring is loaded then).
        """
        self.admission = admission
        self._keys = admission.checks_keys
        self.endpoint = endpoint
        self._peer_address = peer_address

    # ================================================================== events

    def on_request(
        self,
        client: bytes,
        service: str,
        service_frame: bytes,
        body: list[Any],
        framing: Framing,
        now: float,
        key: str | None = None,
    ) -> None:
        """A client REQUEST arrived (any framing): dispatch it to a free worker, queue it,
        answer it (MMI) or refuse it with an error reply."""
        if self._keys and not self.admission.client_message(client, key):
            self._refuse_client_key(client, key)
            return
        header = None
        deadline_s = self._default_deadline
        if len(body) >= 2:
            header = read_request_header(body[0])
            if header is not None:
                if header is BAD_HEADER:
                    self._bad_header(client, ClientRequest(service, service_frame, body, framing))
                    return
                ttl = header.ttl
                if ttl is not None:
                    deadline_s = ttl / 1000.0
                    if deadline_s > self._max_deadline:
                        deadline_s = self._max_deadline
        entry = self.services.get(service)
        if entry is None:
            msg = ClientRequest(service, service_frame, body, framing)
            if service.startswith(MMI_PREFIX):
                self._mmi(client, msg, header, now, key)
                return
            problem = mdp.check_service_name(service)
            if problem is not None:
                self._refuse_service_name(client, msg, header, problem)
                return
            entry = self.services[service] = self._new_service(bytes(service_frame))
        if self._draining_since is not None:
            self.counters["refused_while_draining"] += 1
            self._reply_direct(
                client,
                framing,
                entry.name_bytes,
                header,
                ErrorCode.NO_WORKER,
                "the broker is shutting down and takes no new requests; retry shortly",
            )
            self._forget_if_idle(entry)
            return
        self.counters["requests"] += 1
        request_id = None
        if header is not None:
            request_id = header.id
            by_key = (client, request_id)
            if by_key in self.by_key:
                self.counters["duplicates"] += 1  # the first copy is still live: it answers
                return
        self._ticket_seq += 1
        ticket = self._pack_ticket(self._ticket_prefix, self._ticket_seq)
        req = Request(
            ticket, client, entry, request_id, header, body, now + deadline_s, now, framing
        )
        if request_id is not None:
            self.by_key[(client, request_id)] = req
        if self._keys:
            req.client_key = key
        if deadline_s <= 0:
            self._answer_error(
                req, ErrorCode.DEADLINE_EXCEEDED, "request arrived with no time left (ttl <= 0)"
            )
            self._forget_if_idle(entry)
            return
        self.requests[ticket] = req
        heapq.heappush(self._deadlines, (req.deadline, ticket))
        if req.deadline < self.wake_hint:
            self.wake_hint = req.deadline
        available = entry.available
        if available and not entry.queue:  # the first free worker (see broker.state)
            self._assign(available[next(iter(available))], req, now)
        elif self._enqueue(req, front=False):
            self._dispatch(entry, now)
        else:
            self._forget_if_idle(entry)

    def on_reply(
        self,
        identity: bytes,
        command: WorkerCommand,
        ticket: bytes,
        body: list[Any],
        framing: Framing,
        now: float,
        key: str | None = None,
    ) -> None:
        """A worker replied to ``ticket``: a PARTIAL or the FINAL (``command``)."""
        worker = self.workers.get(identity)
        if self._keys and not self._worker_key_ok(identity, worker, framing, key, now):
            return
        if worker is None:
            self._unknown_worker(identity, command, framing)
            return
        worker.last_seen = now  # any message counts as a heartbeat
        self._activity.move_to_end(identity)
        if worker.timeouts:  # it answers (even late): not hung after all
            self._answered_again(worker, now)
        req = worker.in_flight.get(ticket)
        if req is None:
            self.counters["late_replies"] += 1  # not (or no longer) this worker's request
            return
        if not body:
            self.counters["bodyless_replies"] += 1
        if command is not FINAL:
            self._partial(worker, req, body)
            return
        service = worker.service
        self._release(worker, req)
        if req.done:
            self.counters["late_replies"] += 1
            if req.dispatches > 1:  # another attempt's final came first
                self.counters["duplicate_finals_dropped"] += 1
        else:
            self._finish(req)
            if req.holders:  # another attempt is still out: keep its slot a while
                self._hold_other_slots(req, worker, now + self.settings.release_grace)
            worker.served += 1
            service.served += 1
            if req.header is not None:  # the common case without a call: ours, not an error
                first = body[0] if body else b""
                if first[:7] not in _REPLY_HEADER_STARTS or _MSGPACK_FALSE in first:
                    body = self._reply_body(req, body)
            if req.client_key is None or self._deliverable(req):
                if req.framing is MDP02 and body:  # the common case, without a call
                    frames = [C_HDR, C_FINAL, service.name_bytes, *body]
                    self.outgoing.append((req.client, frames, None))
                else:
                    self._to_client(req.client, req.framing, C_FINAL, service.name_bytes, body)
        if service.queue:
            self._dispatch(service, now)

    def on_ready(
        self,
        identity: bytes,
        service: str,
        metadata: bytes | None,
        framing: Framing,
        now: float,
        key: str | None = None,
    ) -> None:
        """A worker sent READY: register it for ``service`` (refused when already
        registered, for an ``mmi.*`` or bad name, or when its key may not)."""
        worker = self.workers.get(identity)
        if self._keys and not self._worker_key_ok(identity, worker, framing, key, now):
            return
        if worker is None:
            self._ready(identity, service, metadata, framing, now, key)
        else:
            self._heard_from(worker, now)
            self._violation(identity, framing, "READY from an already registered worker", now)

    def on_heartbeat(
        self, identity: bytes, framing: Framing, now: float, key: str | None = None
    ) -> None:
        """A worker's HEARTBEAT: it is alive (an unregistered one is told DISCONNECT)."""
        worker = self.workers.get(identity)
        if self._keys and not self._worker_key_ok(identity, worker, framing, key, now):
            return
        if worker is None:
            self._unknown_worker(identity, HEARTBEAT, framing)
        else:
            self._heard_from(worker, now)

    def on_disconnect(
        self, identity: bytes, framing: Framing, now: float, key: str | None = None
    ) -> None:
        """A worker's DISCONNECT: forget it (its requests go to other workers)."""
        worker = self.workers.get(identity)
        if self._keys and not self._worker_key_ok(identity, worker, framing, key, now):
            return
        if worker is not None:
            self._heard_from(worker, now)
            log.info("worker %s (%s) disconnected", worker.worker_id, worker.service.name)
            self._purge(worker, "it sent DISCONNECT", now, disconnect=False)

    def on_unreadable(
        self, identity: bytes, error: mdp.UnreadableMessage, description: str, now: float
    ) -> None:
        """A message the decoder refused: log, count, and answer where the protocol can.

        A worker-protocol message gets DISCONNECT (and a registered worker that sent it is
        purged); a client message with a readable service frame gets an error reply in
        its framing; anything else has no protocol to answer in and is only logged.
        """
        self.counters["malformed"] += 1
        self.counters["unreadable"] += 1
        worker = self.workers.get(identity)
        if error.role == "worker" or worker is not None:
            self.counters["protocol_errors"] += 1
            self._warn.log(
                logging.WARNING,
                "protocol violation by worker %s: %s (%s); sent DISCONNECT",
                identity.hex(),
                error.reason,
                description,
            )
            if worker is not None:
                self._purge(worker, f"protocol violation: {error.reason}", now, disconnect=True)
            else:
                self.outgoing.append((identity, mdp.to_worker(error.framing, _DISCONNECT), None))
        elif error.role == "client" and error.service:
            self._warn.log(
                logging.WARNING,
                "unreadable request from client %s: %s (%s); answered bad_request",
                identity.hex(),
                error.reason,
                description,
            )
            self._reply_direct(
                identity,
                error.framing,
                bytes(error.service),
                None,
                ErrorCode.BAD_REQUEST,
                f"the broker cannot read this request: {error.reason}",
            )
        else:
            self._warn.log(
                logging.WARNING,
                "unreadable message from %s: %s (%s); no protocol to answer in",
                identity.hex(),
                error.reason,
                description,
            )

    def on_oversized(self, identity: bytes, head: list[bytes], size: int, now: float) -> None:
        """A message over ``max_message_bytes``; ``head`` is its first few frames.

        A client request gets a ``bad_request`` error reply naming the limit; a worker
        message is a protocol violation (DISCONNECT, purge).
        """
        limit = self.settings.max_message_bytes
        reason = f"message of {size} bytes exceeds the limit of {limit}"
        self.counters["oversized"] += 1
        try:
            msg = mdp.decode_inbound(head)
        except mdp.UnreadableMessage as err:
            self.on_unreadable(identity, err, f"{reason}; {_describe(head)}", now)
            return
        self.counters["malformed"] += 1
        self._warn.log(logging.WARNING, "from %s: %s", identity.hex(), reason)
        if isinstance(msg, ClientRequest):
            header = read_request_header(msg.body[0]) if len(msg.body) >= 2 else None
            self._reply_direct(
                identity,
                msg.framing,
                bytes(msg.service_frame),
                None if header is BAD_HEADER else header,
                ErrorCode.BAD_REQUEST,
                f"request of {size} bytes exceeds the broker's limit of "
                f"{limit} bytes (MOLE_BROKER_MAX_MESSAGE_BYTES)",
            )
        else:
            self._violation(identity, msg.framing, reason, now)

    def on_unreachable(self, identity: bytes, req: Request, now: float) -> None:
        """Sending ``req`` to worker ``identity`` failed: re-queue it first, purge the worker.

        The failed send does not count as an attempt.
        """
        worker = self.workers.get(identity)
        if worker is None or req.worker is not worker or req.done:
            return
        self._release(worker, req)
        req.dispatches -= 1
        if req.holders:  # an earlier attempt is still out: that one goes on
            req.worker = req.holders[-1]
        else:
            req.worker = None
            self._enqueue(req, front=True)
        self._purge(worker, "it is unreachable", now, disconnect=False)

    def on_tick(self, now: float) -> None:
        """Run the timers that are due: key re-reads, heartbeats, expiry, deadlines."""
        if self.admission.refresh(now):
            self._apply_key_changes(now)
        self._send_heartbeats(now)
        self._expire_silent_workers(now)
        self._expire_deadlines(now)
        self._expire_attempts(now)
        self._release_held_slots(now)
        if self._disconnect_when_idle:
            self._disconnect_idle_drained(now)

    def next_timer(self, now: float, longest: float) -> float:
        """When :meth:`on_tick` is next due (at most ``now + longest``).

        Heartbeat and expiry times are rounded up to a tick of a tenth of the heartbeat
        interval, so many workers' heartbeats go out in one batch; deadlines are exact.
        """
        due = now + longest
        tick = self._tick
        if self._heartbeats:
            due = min(due, math.ceil(self._heartbeats[0][0] / tick) * tick)
        if self._activity:
            first = next(iter(self._activity.values()))
            due = min(due, math.ceil((first.last_seen + self.settings.expiry) / tick) * tick)
        if self._deadlines:
            due = min(due, self._deadlines[0][0])
        if self._releases:
            due = min(due, self._releases[0][0])
        if self._attempts:
            due = min(due, self._attempts_from * tick)
        return float(min(due, self.admission.next_check()))

    def take_wake_hint(self) -> float:
        """The earliest timer set since the last call (``inf`` if none), and forget it.

        The shell asks this after handling messages, to wake up earlier when one of them
        set a timer sooner than it planned (a short deadline, say), without computing
        :meth:`next_timer` per batch.
        """
        hint = self.wake_hint
        self.wake_hint = math.inf
        return hint

    def begin_drain(self, now: float) -> None:
        """Stop taking new requests; queued and in-flight ones are still served."""
        if self._draining_since is None:
            self._draining_since = now
            log.info("draining: refusing new requests, %d in flight or queued", len(self.requests))

    @property
    def draining(self) -> bool:
        return self._draining_since is not None

    def drained(self) -> bool:
        """True when draining and every request has had its answer."""
        return self._draining_since is not None and not self.requests

    def shutdown(self, now: float) -> None:
        """DISCONNECT every worker and answer every unanswered request with an error."""
        workers = list(self.workers.values())
        for worker in workers:
            self.outgoing.append(_to_worker(worker, _DISCONNECT))
        answered = 0
        for req in list(self.requests.values()):
            if req.done:
                continue
            answered += 1
            if req.worker is None:
                self._answer_error(
                    req, ErrorCode.NO_WORKER, "the broker is shutting down; retry when it is back"
                )
            else:
                self._answer_error(
                    req,
                    ErrorCode.WORKER_LOST,
                    "the broker is shutting down; the request may or may not have been processed",
                )
        log.info(
            "broker shutting down: %d worker(s) disconnected, %d request(s) answered with an error",
            len(workers),
            answered,
        )

    def status(self, now: float) -> dict[str, Any]:
        """The ``mmi.status`` document (format in docs/interfaces.md)."""
        s = self.settings
        counters = dict(self.counters)
        counters["errors_by_code"] = dict(self.counters["errors_by_code"])
        counters["queued"] = self.queued_total
        counters["live_requests"] = len(self.requests)
        return {
            "broker": {
                "id": self.broker_id,
                "version": BROKER_VERSION,
                "endpoint": self.endpoint,
                "uptime_s": round(now - self.started, 3),
                "heartbeat_interval_s": s.heartbeat_interval,
                "liveness": s.liveness,
                "queue_limit": s.queue_limit,
                "default_deadline_s": s.default_deadline,
                "max_message_bytes": s.max_message_bytes,
                "pid": os.getpid(),
                "draining": self.draining,
            },
            "services": {svc.name: service_status(svc) for svc in self.services.values()},
            "workers": [worker_status(w, now) for w in self.workers.values()],
            "drained": [self._drained_row(record, now) for record in self._drained.values()],
            "counters": counters,
        }

    # ================================================================== management

    def drain_worker(
        self, worker_id: str, now: float, *, disconnect: bool = False
    ) -> dict[str, Any]:
        """Take ``worker_id`` out of service: no new requests; what it holds finishes and
        is answered as usual. With ``disconnect`` it is told DISCONNECT once idle.

        The id is remembered until :meth:`resume_worker`: if the worker registers again
        (an RFC 18 worker does after a DISCONNECT) it stays drained, or with
        ``disconnect`` its READY is refused. Asking again is how an operator polls: the
        report (``broker.management.report``) says the state and what is in flight.

        Raises:
            ManagementError: ``unknown_worker`` when no registered worker has this id
                (or identity) and it was not drained before.
        """
        workers = self._workers_named(worker_id)
        record = self._drain_record(worker_id, workers)
        if record is None:
            if not workers:
                raise self._unknown_worker_id(worker_id)
            first = workers[0]
            record = DrainRecord(first.worker_id, first.service.name, now, disconnect)
            self._drained[record.worker_id] = record
            self.counters["workers_drained"] += 1
        elif disconnect:
            record.disconnect = True
        for worker in workers:
            if not worker.draining:
                worker.draining = True
                worker.service.available.pop(worker.identity, None)
                log.info(
                    "worker %s of %r drained by the operator: no new requests, %d in flight%s",
                    worker.worker_id,
                    worker.service.name,
                    len(worker.in_flight),
                    "; DISCONNECT once idle" if record.disconnect else "",
                )
            if record.disconnect:
                self._disconnect_when_idle[worker.identity] = worker
        if record.disconnect:
            self._disconnect_idle_drained(now)
        return self._manage_report(record.worker_id, record.service, record, workers, now)

    def resume_worker(self, worker_id: str, now: float) -> dict[str, Any]:
        """Undo :meth:`drain_worker`: the worker takes new requests again (or, if it is
        not registered now, once it registers).

        Raises:
            ManagementError: ``unknown_worker`` when the id is neither registered nor
                drained.
        """
        workers = self._workers_named(worker_id)
        record = self._drain_record(worker_id, workers)
        if record is None and not workers:
            raise self._unknown_worker_id(worker_id)
        if record is not None:
            del self._drained[record.worker_id]
            self.counters["workers_resumed"] += 1
        for worker in workers:
            self._disconnect_when_idle.pop(worker.identity, None)
            if worker.draining:
                worker.draining = False
                log.info(
                    "worker %s of %r resumed by the operator",
                    worker.worker_id,
                    worker.service.name,
                )
                if not worker.suspect and len(worker.in_flight) < worker.slots:
                    worker.service.available[worker.identity] = worker
                    self._dispatch(worker.service, now)
        service = workers[0].service.name if workers else record.service if record else ""
        name = workers[0].worker_id if workers else worker_id
        return self._manage_report(name, service, None, workers, now)

    def _workers_named(self, name: str) -> list[Worker]:
        """Registered workers whose id (or routing identity in hex) is ``name``."""
        return [w for w in self.workers.values() if name in (w.worker_id, w.identity.hex())]

    def _drain_record(self, name: str, workers: list[Worker]) -> DrainRecord | None:
        record = self._drained.get(name)
        if record is None and workers:
            record = self._drained.get(workers[0].worker_id)
        return record

    def _unknown_worker_id(self, name: str) -> ManagementError:
        known = sorted({w.worker_id for w in self.workers.values()} | set(self._drained))
        shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        return ManagementError(
            ErrorCode.UNKNOWN_WORKER,
            f"no worker {name!r} is registered or drained; known: {shown or 'none'} "
            "(`mole status` lists them)",
        )

    def _manage_report(
        self,
        worker_id: str,
        service_name: str,
        record: DrainRecord | None,
        workers: list[Worker],
        now: float,
    ) -> dict[str, Any]:
        service = self.services.get(service_name)
        serving = 0
        if service is not None:
            serving = sum(
                1
                for w in service.workers.values()
                if not w.draining and not w.suspect and w not in workers
            )
        in_flight = sum(len(w.in_flight) for w in workers)
        return management.report(
            worker_id, service_name, record, len(workers), in_flight, serving, now
        )

    def _disconnect_idle_drained(self, now: float) -> None:
        """Drained workers marked "disconnect when idle" that are idle: DISCONNECT them."""
        for identity, worker in list(self._disconnect_when_idle.items()):
            if not worker.alive or not worker.draining:
                del self._disconnect_when_idle[identity]
            elif not worker.in_flight:
                del self._disconnect_when_idle[identity]
                self._purge(worker, "drained by the operator, now idle", now, disconnect=True)

    def _drained_row(self, record: DrainRecord, now: float) -> dict[str, Any]:
        workers = [w for w in self.workers.values() if w.worker_id == record.worker_id]
        return self._manage_report(record.worker_id, record.service, record, workers, now)

    # ================================================================== clients

    def _mmi(
        self,
        client: bytes,
        msg: ClientRequest,
        header: RequestFields | None,
        now: float,
        key: str | None,
    ) -> None:
        """RFC 8 service discovery, our ``mmi.status`` and the management services
        (``mmi.drain``, ``mmi.resume``); other ``mmi.*`` names get 501."""
        name = msg.service
        if name == mdp.MMI_DRAIN or name == mdp.MMI_RESUME:
            return self._mmi_manage(client, msg, header, now, key)
        if name == mdp.MMI_SERVICE:
            asked = msg.body[1] if header is not None else msg.body[0]
            try:
                known = self.services.get(bytes(asked).decode("utf-8"))
            except UnicodeDecodeError:
                known = None
            answer = b"200" if known is not None and known.workers else b"404"
        elif name == mdp.MMI_STATUS:
            answer = pack(self.status(now))
        else:
            answer = b"501"
        body = [answer] if header is None else [ReplyHeader(header.id).encode(), answer]
        self._to_client(client, msg.framing, C_FINAL, bytes(msg.service_frame), body)

    def _mmi_manage(
        self,
        client: bytes,
        msg: ClientRequest,
        header: RequestFields | None,
        now: float,
        key: str | None,
    ) -> None:
        """``mmi.drain`` / ``mmi.resume``: the report, or an error reply with its code.

        Under an allow-list only keys with the management permission may use them
        (``broker.acl``: ``@manage``); without one, anyone on the bus may, as with
        ``mmi.status``.
        """
        name = msg.service
        try:
            if self._keys and not self.admission.may_manage(key):
                self.counters["management_refused"] += 1
                self._warn.log(
                    logging.WARNING,
                    "%s from client %s refused: %s lacks the management permission",
                    name,
                    client.hex(),
                    self.admission.name(key),
                )
                raise ManagementError(
                    ErrorCode.FORBIDDEN,
                    f"{name} is for operators: the CURVE key {self.admission.name(key)} "
                    "lacks the management permission; use the operator's key (`mole up` "
                    "keeps it in DATA_DIR/keys/operator.key_secret) or grant this key "
                    '"@manage" in the broker\'s ACL',
                )
            frame = msg.body[1] if header is not None else (msg.body[0] if msg.body else b"")
            command = management.parse_command(name, bytes(frame), enveloped=header is not None)
            if command.service == mdp.MMI_DRAIN:
                doc = self.drain_worker(command.worker_id, now, disconnect=command.disconnect)
            else:
                doc = self.resume_worker(command.worker_id, now)
        except ManagementError as err:
            self._reply_direct(
                client, msg.framing, bytes(msg.service_frame), header, err.code, err.message
            )
            return
        answer = pack(doc)
        body = [answer] if header is None else [ReplyHeader(header.id).encode(), answer]
        self._to_client(client, msg.framing, C_FINAL, bytes(msg.service_frame), body)

    def _bad_header(self, client: bytes, msg: ClientRequest) -> None:
        self.counters["malformed"] += 1
        self._warn.log(
            logging.WARNING, "request header from client %s has bad field types", client.hex()
        )
        try:  # read_request_header found its "id": the answer carries it
            raw = msgpack.unpackb(bytes(msg.body[0]), raw=False, strict_map_key=False)
            header: RequestFields | None = RequestFields(VERSION, str(raw["id"]))
        except Exception:
            header = None
        self._reply_direct(
            client,
            msg.framing,
            bytes(msg.service_frame),
            header,
            ErrorCode.BAD_REQUEST,
            "request header fields 'ttl' and 'attempt' must be integers",
        )

    def _refuse_service_name(
        self, client: bytes, msg: ClientRequest, header: RequestFields | None, problem: str
    ) -> None:
        self.counters["bad_service_names"] += 1
        self.counters["malformed"] += 1
        self._warn.log(
            logging.WARNING,
            "request from client %s for service %r refused: %s",
            client.hex(),
            msg.service[:64],
            problem,
        )
        self._reply_direct(
            client,
            msg.framing,
            bytes(msg.service_frame),
            header,
            ErrorCode.BAD_REQUEST,
            f"{problem}; a service name must be {mdp.SERVICE_NAME_RULE}",
        )

    def _refuse_client_key(self, client: bytes, key: str | None) -> None:
        """A client message under a key no longer allow-listed: dropped, counted, logged."""
        self.counters["curve_refused"] += 1
        self._warn.log(
            logging.WARNING,
            "request from client %s under a CURVE key that is no longer allow-listed (%s): dropped",
            client.hex(),
            self.admission.name(key),
        )

    # ================================================================== workers

    def _worker_key_ok(
        self,
        identity: bytes,
        worker: Worker | None,
        framing: Framing,
        key: str | None,
        now: float,
    ) -> bool:
        """Under an allow-list: may this worker message be read? Refuses it when not."""
        if not self.admission.worker_allowed(key):
            self._refuse_worker_key(identity, worker, framing, key, now)
            return False
        if worker is not None and not self.admission.same_worker(worker.key, key):
            # ROUTER_HANDOVER let another allowed key take this routing id over
            self._violation(
                identity,
                framing,
                "message under another CURVE key than the worker registered with",
                now,
            )
            return False
        return True

    def _heard_from(self, worker: Worker, now: float) -> None:
        """Any message from a registered worker counts as a heartbeat."""
        worker.last_seen = now
        self._activity.move_to_end(worker.identity)

    def _partial(self, worker: Worker, req: Request, body: list[Any]) -> None:
        """A worker's PARTIAL for ``req``: passed on to the client unless the request is
        answered already or was given to another worker since (no interleaving)."""
        if req.done or req.worker is not worker:
            return
        if req.client_key is not None and not self._deliverable(req):
            return
        if req.header is not None:
            body = self._reply_body(req, body)
        self._to_client(req.client, req.framing, C_PARTIAL, req.service.name_bytes, body)

    def _reply_body(self, req: Request, body: list[Any]) -> list[Any]:
        """The body a client of ours gets: the worker's when it carries our reply header,
        else the worker's frames behind a header marking them raw (a plain RFC 18 worker).

        Worker errors in our header are counted per service and code. The header frame is
        ``bytes`` (the shell copies a message's first frames).
        """
        first = body[0] if body else b""
        if first[:7] in _REPLY_HEADER_STARTS:
            if _MSGPACK_FALSE in first and len(first) <= MAX_HEADER_BYTES:
                self._count_worker_error(req.service, first)
            return body
        self.counters["raw_replies"] += 1
        return [mdp.raw_reply_header(req.request_id or ""), *body]

    def _count_worker_error(self, service: Service, frame: bytes) -> None:
        try:
            header = msgpack.unpackb(bytes(frame), raw=False, strict_map_key=False)
        except Exception:
            return
        if isinstance(header, dict) and header.get("ok") is False:
            service.errors += 1
            self._count_error(str(header.get("code", ErrorCode.INTERNAL.value)))

    def _ready(
        self,
        identity: bytes,
        name: str,
        raw_metadata: bytes | None,
        framing: Framing,
        now: float,
        key: str | None,
    ) -> None:
        """Register a worker that sent READY, unless its service or key forbid it."""
        if name.startswith(MMI_PREFIX):
            return self._violation(
                identity,
                framing,
                f"a worker may not register {name!r}: mmi.* services belong to the broker",
                now,
            )
        problem = mdp.check_service_name(name)
        if problem is not None:
            self.counters["bad_service_names"] += 1
            return self._violation(
                identity,
                framing,
                f"READY refused: {problem} (a service name must be {mdp.SERVICE_NAME_RULE})",
                now,
            )
        if self._keys and not self.admission.may_register(key, name):
            self.counters["curve_refused"] += 1
            self._warn.log(
                logging.WARNING,
                "worker %s under %s may not register %r (not in the CURVE ACL %s): sent DISCONNECT",
                identity.hex(),
                self.admission.name(key),
                name,
                self.admission.describe_acl(),
            )
            self.outgoing.append((identity, mdp.to_worker(framing, _DISCONNECT), None))
            return None
        metadata: Any = {}
        slots = 1
        if raw_metadata is not None:
            try:
                metadata = msgpack.unpackb(raw_metadata, raw=False, strict_map_key=False)
            except Exception:
                metadata = None
            if not isinstance(metadata, dict):
                return self._violation(
                    identity, framing, "READY metadata frame is not a msgpack map", now
                )
            raw_slots = metadata.get("slots", 1)
            if (
                not isinstance(raw_slots, int)
                or isinstance(raw_slots, bool)
                or not 1 <= raw_slots <= self.settings.max_slots
            ):
                return self._violation(
                    identity,
                    framing,
                    f"READY metadata 'slots' must be an integer from 1 to "
                    f"{self.settings.max_slots}",
                    now,
                )
            slots = raw_slots
        service = self.services.get(name)
        if service is None:
            service = self.services[name] = self._new_service(name.encode("utf-8"))
        address = self._peer_address(identity)
        worker = Worker(identity, service, slots, metadata, address, now, framing)
        worker.key = key
        record = self._drained.get(worker.worker_id)
        if record is not None and record.disconnect:
            self.counters["drained_ready_refused"] += 1
            self._warn.log(
                logging.INFO,
                "READY from worker %s refused: it is drained (`mole drain --resume %s`); "
                "sent DISCONNECT",
                worker.worker_id,
                worker.worker_id,
            )
            self.outgoing.append((identity, mdp.to_worker(framing, _DISCONNECT), None))
            return self._forget_if_idle(service)
        self.workers[identity] = worker
        self._activity[identity] = worker
        self._heartbeats.append((now + self.settings.heartbeat_interval, worker))
        self.wake_hint = min(self.wake_hint, now + self.settings.heartbeat_interval)
        service.workers[identity] = worker
        if record is None:
            service.available[identity] = worker
        else:  # drained by the operator before it (re)connected: registered, no work
            worker.draining = True
        self.counters["workers_registered"] += 1
        log.info(
            "worker %s registered for %r with %d slot(s) from %s (%s)",
            worker.worker_id,
            service.name,
            slots,
            address or "unknown address",
            framing.name,
        )
        self._dispatch(service, now)
        return None

    def _unknown_worker(self, identity: bytes, command: WorkerCommand, framing: Framing) -> None:
        """RFC 18: anything but READY from an unregistered worker gets DISCONNECT.

        This is also how workers learn that the broker restarted: they reconnect and
        send READY again.
        """
        self.counters["unknown_worker_messages"] += 1
        self._warn.log(
            logging.DEBUG,
            "%s from unregistered worker %s: sent DISCONNECT",
            command.name,
            identity.hex(),
        )
        self.outgoing.append((identity, mdp.to_worker(framing, _DISCONNECT), None))

    def _refuse_worker_key(
        self,
        identity: bytes,
        worker: Worker | None,
        framing: Framing,
        key: str | None,
        now: float,
    ) -> None:
        """A worker message under a key no longer allow-listed: purge it, DISCONNECT."""
        self.counters["curve_refused"] += 1
        self._warn.log(
            logging.WARNING,
            "worker %s sent under %s, which is not allow-listed (revoked): sent DISCONNECT",
            identity.hex(),
            self.admission.name(key),
        )
        if worker is not None:
            self._purge(worker, "its CURVE key was revoked", now, disconnect=False)
        self.outgoing.append((identity, mdp.to_worker(framing, _DISCONNECT), None))

    def _violation(self, identity: bytes, framing: Framing, reason: str, now: float) -> None:
        """A worker broke the protocol: count, log, purge it, and send DISCONNECT."""
        self.counters["protocol_errors"] += 1
        self.counters["malformed"] += 1
        self._warn.log(
            logging.WARNING,
            "protocol violation by worker %s: %s; sent DISCONNECT",
            identity.hex(),
            reason,
        )
        worker = self.workers.get(identity)
        if worker is not None:
            self._purge(worker, f"protocol violation: {reason}", now, disconnect=False)
        self.outgoing.append((identity, mdp.to_worker(framing, _DISCONNECT), None))

    # ================================================================== counters
    # The only methods that change queue depth, slots and in-flight counts.

    def _assign(self, worker: Worker, req: Request, now: float) -> None:
        """Give ``req`` to ``worker`` (which has a free slot) and queue the REQUEST.

        A re-dispatched or queued request of ours gets a fresh header: the time it has
        left, and its attempt number.
        """
        body = req.body
        if (req.dispatches or req.received_at != now) and req.header is not None:
            body = [self._fresh_header(req, now), *body[1:]]
        req.dispatches += 1
        req.worker = worker
        req.holders.append(worker)
        # the attempt's timer, inline (this runs once per request): see _attempt_timer
        timeout = req.service.attempt_timeout
        if timeout is None:
            timeout = (req.deadline - req.received_at) / self.settings.max_attempts
            if timeout < MIN_DERIVED_ATTEMPT_TIMEOUT:
                timeout = MIN_DERIVED_ATTEMPT_TIMEOUT
        bucket = _floor((now + timeout) / self._tick) + 1  # rounded up (by up to a tick)
        entries = self._attempts.get(bucket)
        if entries is None or bucket < self._attempts_from:
            self._attempt_timer(now + timeout, req.ticket, req.dispatches, True)
        else:
            entries.append((req.ticket, req.dispatches, True))
        worker.in_flight[req.ticket] = req
        if len(worker.in_flight) >= worker.slots:
            worker.service.available.pop(worker.identity, None)
        else:  # round robin weighted by slots: to the back of the line
            worker.service.available.move_to_end(worker.identity)
        frames = [*worker.request_head, req.ticket, EMPTY, *body]  # in the worker's framing
        self.outgoing.append((worker.identity, frames, req))

    def _release(self, worker: Worker, req: Request) -> None:
        """``worker`` no longer holds ``req``: free its slot."""
        if worker.in_flight.pop(req.ticket, None) is None:
            return
        req.holders.remove(worker)  # a worker holding the ticket is always among them
        service = worker.service
        if (
            worker.alive
            and not worker.suspect
            and not worker.draining
            and worker.identity not in service.available
        ):
            service.available[worker.identity] = worker

    def _enqueue(self, req: Request, *, front: bool) -> bool:
        """Put ``req`` in its service's queue; answer ``overloaded`` when it is full.

        Re-dispatched requests (``front``) skip the bounds: they were admitted already.
        """
        service = req.service
        if not front:
            if len(service.queue) >= self.settings.queue_limit:
                self._answer_error(
                    req,
                    ErrorCode.OVERLOADED,
                    f"service {service.name!r} has {len(service.queue)} "
                    "requests waiting (the queue limit); retry later",
                )
                return False
            if self.queued_total >= self.settings.total_queue_limit:
                self._answer_error(
                    req,
                    ErrorCode.OVERLOADED,
                    f"the broker has {self.queued_total} requests waiting "
                    "(its total queue limit); retry later",
                )
                return False
        service.queue[req.ticket] = req
        if front:
            service.queue.move_to_end(req.ticket, last=False)
        self.queued_total += 1
        return True

    def _dequeue(self, req: Request) -> bool:
        """Take ``req`` out of its service's queue; False when it was not queued."""
        if req.service.queue.pop(req.ticket, None) is None:
            return False
        self.queued_total -= 1
        return True

    # ================================================================== dispatch, answers

    def _dispatch(self, service: Service, now: float) -> None:
        """Give waiting requests to free workers of ``service`` until one side runs out."""
        queue = service.queue
        available = service.available
        while queue and available:
            req = next(iter(queue.values()))
            self._dequeue(req)
            if req.done:
                continue
            self._assign(available[next(iter(available))], req, now)

    def _fresh_header(self, req: Request, now: float) -> bytes:
        """Our header with the time left and the attempt number as of this dispatch (the
        client's header frame, the first of the body, read again: every key it has is kept)."""
        header = msgpack.unpackb(bytes(req.body[0]), raw=False, strict_map_key=False)
        header["ttl"] = max(1, int((req.deadline - now) * 1000))
        header["attempt"] = int(header.get("attempt", 0)) + req.dispatches
        packed: bytes = pack(header)
        return packed

    def _finish(self, req: Request) -> None:
        """Mark ``req`` answered and forget it (its worker slot is freed separately)."""
        req.done = True
        self.requests.pop(req.ticket, None)
        if req.request_id is not None:
            key = (req.client, req.request_id)
            owner = self.by_key.pop(key, None)
            if owner is not req and owner is not None:  # a later request with its key: kept
                self.by_key[key] = owner
        self.counters["replies"] += 1

    def _answer_error(self, req: Request, code: ErrorCode, message: str) -> None:
        """Finish ``req`` with a broker error reply (its one final answer)."""
        if req.header is not None:
            body = [ReplyHeader(req.request_id or "", False, code.value, message).encode()]
        else:
            body = [pack({"error": code.value, "message": message})]
        self._finish(req)
        req.service.errors += 1
        self._count_error(code)
        if req.client_key is None or self._deliverable(req):
            self._to_client(req.client, req.framing, C_FINAL, req.service.name_bytes, body)

    def _reply_direct(
        self,
        client: bytes,
        framing: Framing,
        service: bytes,
        header: RequestFields | None,
        code: ErrorCode,
        message: str,
    ) -> None:
        """Error answer to a message that never became a tracked request."""
        if header is not None:
            body = ReplyHeader(header.id, False, code.value, message).encode()
        else:
            body = pack({"error": code.value, "message": message})
        self._count_error(code)
        self._to_client(client, framing, C_FINAL, service, [body])

    def _to_client(
        self, client: bytes, framing: Framing, command: bytes, service: bytes, body: list[Any]
    ) -> None:
        """Queue ``[header, command, service, *body]`` for a client, in its framing.

        ``command`` is the command frame (``C_FINAL`` or ``C_PARTIAL``).
        """
        if framing is MDP02 and body:
            frames: list[Any] | None = [C_HDR, command, service, *body]
        else:
            frames = mdp.to_client(framing, ClientCommand(command[0]), service, body)
        if frames is None:  # MDP/0.1 has no PARTIAL
            self.counters["partials_dropped"] += 1
            return
        self.outgoing.append((client, frames, None))

    def _deliverable(self, req: Request) -> bool:
        """Under an allow-list: may the reply go to the routing id that asked?"""
        if self.admission.may_deliver(req.client, req.client_key):
            return True
        self.counters["curve_refused"] += 1
        return False

    def _count_error(self, code: ErrorCode | str) -> None:
        by_code = self.counters["errors_by_code"]
        by_code[str(code)] = by_code.get(str(code), 0) + 1

    def _new_service(self, name_bytes: bytes) -> Service:
        """A service entry, with its attempt timeout from the settings."""
        service = Service(name_bytes)
        timeouts = self._service_timeouts
        if service.name in timeouts:
            service.attempt_timeout = timeouts[service.name]
        else:
            prefixes = [p for p in timeouts if p.endswith("*") and service.name.startswith(p[:-1])]
            if prefixes:
                service.attempt_timeout = timeouts[max(prefixes, key=len)]
            elif self.settings.attempt_timeout > 0:
                service.attempt_timeout = self.settings.attempt_timeout
        return service

    def _forget_if_idle(self, service: Service) -> None:
        """Drop a service nothing refers to, so invented names cannot grow the tables."""
        if service.idle() and self.services.get(service.name) is service:
            del self.services[service.name]

    # ================================================================== purge

    def _purge(self, worker: Worker, reason: str, now: float, *, disconnect: bool) -> None:
        """Forget ``worker``; re-dispatch its requests or answer them ``worker_lost``."""
        if not worker.alive:
            return
        worker.alive = False
        identity = worker.identity
        service = worker.service
        self.workers.pop(identity, None)
        self._activity.pop(identity, None)
        service.workers.pop(identity, None)
        service.available.pop(identity, None)
        self.counters["workers_purged"] += 1
        redispatched = lost = 0
        for req in reversed(list(worker.in_flight.values())):
            self._release(worker, req)
            if req.done:
                continue
            if req.holders:  # another attempt is still out on a live worker: it goes on
                req.worker = req.holders[-1]
                continue
            req.worker = None
            req.lost = True
            if req.dispatches < self.settings.max_attempts and req.deadline > now:
                self._enqueue(req, front=True)
                redispatched += 1
            else:
                lost += 1
                self._answer_error(
                    req,
                    ErrorCode.WORKER_LOST,
                    f"worker {worker.worker_id} of {service.name!r} was lost "
                    f"({reason}) after {req.dispatches} attempt(s)",
                )
        self.counters["redispatched"] += redispatched
        log.info(
            "worker %s of %r purged: %s; %d request(s) re-dispatched, %d lost",
            worker.worker_id,
            service.name,
            reason,
            redispatched,
            lost,
        )
        if disconnect:
            self.outgoing.append(_to_worker(worker, _DISCONNECT))
        self._dispatch(service, now)
        self._forget_if_idle(service)

    # ================================================================== timers

    def _send_heartbeats(self, now: float) -> None:
        """Each worker gets a HEARTBEAT once per interval, spread by registration time."""
        beats = self._heartbeats
        interval = self.settings.heartbeat_interval
        while beats and beats[0][0] <= now:
            _, worker = beats.popleft()
            if worker.alive:
                self.outgoing.append(_to_worker(worker, HEARTBEAT))
                beats.append((now + interval, worker))

    def _expire_silent_workers(self, now: float) -> None:
        """Purge workers not heard from for ``expiry`` (least recently heard come first)."""
        activity = self._activity
        expiry = self.settings.expiry
        while activity:
            worker = next(iter(activity.values()))
            if worker.last_seen + expiry > now:
                break
            self._purge(worker, f"silent for {now - worker.last_seen:.2f}s", now, disconnect=True)

    def _expire_deadlines(self, now: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, ticket = heapq.heappop(heap)
            req = self.requests.get(ticket)
            if req is None or req.deadline != deadline:
                continue
            self._expire(req, now)
        if len(heap) > 4096 and len(heap) > 4 * len(self.requests):
            requests = self.requests
            self._deadlines = [
                entry
                for entry in heap
                if (req := requests.get(entry[1])) is not None and req.deadline == entry[0]
            ]
            heapq.heapify(self._deadlines)

    def _expire(self, req: Request, now: float) -> None:
        """``req``'s deadline passed: answer it with the error that says why."""
        service = req.service
        worker = req.worker
        waited = now - req.received_at
        if worker is None:  # still waiting in the queue
            self._dequeue(req)
            if req.lost:
                self._answer_error(
                    req,
                    ErrorCode.WORKER_LOST,
                    f"the worker holding this request for {service.name!r} was "
                    f"lost and no other worker took it within {waited:.1f}s",
                )
            elif not service.workers:
                self._answer_error(
                    req,
                    ErrorCode.NO_WORKER,
                    f"no worker of service {service.name!r} registered within "
                    f"the deadline ({waited:.1f}s)",
                )
            elif all(w.draining for w in service.workers.values()):
                self._answer_error(
                    req,
                    ErrorCode.NO_WORKER,
                    f"every worker of service {service.name!r} is drained for maintenance "
                    f"and none came back within the deadline ({waited:.1f}s)",
                )
            else:
                self._answer_error(
                    req,
                    ErrorCode.DEADLINE_EXCEEDED,
                    f"all {len(service.workers)} worker(s) of {service.name!r} "
                    f"stayed busy until the deadline ({waited:.1f}s)",
                )
        else:
            self._answer_error(
                req,
                ErrorCode.DEADLINE_EXCEEDED,
                f"worker {worker.worker_id} of {service.name!r} did not answer before the "
                f"deadline ({waited:.1f}s)",
            )
            # keep the slots reserved a while for the late reply, then free them
            self._hold_other_slots(req, None, now + self.settings.release_grace)
        self._forget_if_idle(service)

    def _attempt_timeout(self, req: Request) -> float:
        """How long one attempt of ``req`` may take before it also goes to another worker."""
        timeout = req.service.attempt_timeout
        if timeout is None:
            whole = req.deadline - req.received_at
            timeout = max(MIN_DERIVED_ATTEMPT_TIMEOUT, whole / self.settings.max_attempts)
        return timeout

    def _attempt_timer(self, when: float, ticket: bytes, number: int, counted: bool) -> None:
        """Look at attempt ``number`` of ``ticket`` at ``when`` (rounded up to a tick)."""
        bucket = max(math.ceil(when / self._tick), self._attempts_from)
        entries = self._attempts.get(bucket)
        if entries is None:
            self._attempts[bucket] = [(ticket, number, counted)]
            self.wake_hint = min(self.wake_hint, bucket * self._tick)
        else:
            entries.append((ticket, number, counted))

    def _expire_attempts(self, now: float) -> None:
        """Attempts that ran past their timeout: count them against their worker, and give
        the request to another free worker of the service while attempts and deadline
        allow (the first final answer wins)."""
        last = math.floor(now / self._tick)
        if not self._attempts:
            self._attempts_from = last + 1
            return
        for bucket in range(self._attempts_from, last + 1):
            self._attempts_from = bucket + 1
            for ticket, number, counted in self._attempts.pop(bucket, ()):
                req = self.requests.get(ticket)
                if req is None or req.done or req.dispatches != number or req.worker is None:
                    continue  # answered, or a newer attempt is out
                self._attempt_timed_out(req, now, counted)

    def _attempt_timed_out(self, req: Request, now: float, counted: bool) -> None:
        worker = req.worker
        assert worker is not None
        if counted:
            self.counters["attempt_timeouts"] += 1
            worker.timeouts += 1
            if worker.timeouts >= self.settings.suspect_after and not worker.suspect:
                self._mark_suspect(worker)
        if req.dispatches >= self.settings.max_attempts or req.deadline <= now:
            return
        other = next((w for w in req.service.available.values() if w not in req.holders), None)
        if other is None:  # no other worker free now: look again a little later
            retry = now + min(self.settings.heartbeat_interval, self._attempt_timeout(req))
            self._attempt_timer(retry, req.ticket, req.dispatches, False)
            return
        self.counters["redispatched_after_timeout"] += 1
        log.info(
            "request %s of %r: worker %s did not answer within %.1fs; also sent to %s",
            req.request_id or req.ticket.hex(),
            req.service.name,
            worker.worker_id,
            now - req.received_at,
            other.worker_id,
        )
        self._assign(other, req, now)

    def _mark_suspect(self, worker: Worker) -> None:
        """``worker`` timed out ``suspect_after`` times in a row: no new work for it."""
        worker.suspect = True
        worker.service.available.pop(worker.identity, None)
        self.counters["workers_suspected"] += 1
        log.warning(
            "worker %s of %r is suspect: %d attempt(s) in a row timed out; it gets no new "
            "requests until it answers again",
            worker.worker_id,
            worker.service.name,
            worker.timeouts,
        )

    def _answered_again(self, worker: Worker, now: float) -> None:
        """A worker that had timed out answered: clear its count, and its suspicion."""
        worker.timeouts = 0
        if worker.suspect:
            worker.suspect = False
            log.info("worker %s answered again: no longer suspect", worker.worker_id)
            if len(worker.in_flight) < worker.slots and not worker.draining:
                worker.service.available[worker.identity] = worker
                self._dispatch(worker.service, now)

    def _hold_other_slots(self, req: Request, answered: Worker | None, until: float) -> None:
        """Keep the slots of the workers still holding ``req`` until ``until``, then free
        them (their replies, if they come, are dropped as late)."""
        for holder in req.holders:
            if holder is not answered:
                heapq.heappush(self._releases, (until, holder.identity, req.ticket))
                self.wake_hint = min(self.wake_hint, until)

    def _release_held_slots(self, now: float) -> None:
        """Free slots held for requests answered at their deadline whose reply never came."""
        releases = self._releases
        while releases and releases[0][0] <= now:
            _, identity, ticket = heapq.heappop(releases)
            worker = self.workers.get(identity)
            if worker is None or ticket not in worker.in_flight:
                continue
            self._release(worker, worker.in_flight[ticket])
            self._dispatch(worker.service, now)

    def _apply_key_changes(self, now: float) -> None:
        """The allow-list or ACL changed: cut off every peer it no longer admits.

        The authenticator already refuses new connections with a removed key; a connection
        made before stays open in libzmq, so here its worker is purged (its requests
        re-dispatched as for a dead one) and told DISCONNECT, and the requests of a revoked
        client are dropped unanswered (nothing more goes to that key).
        """
        admission = self.admission
        log.info("CURVE allow-list/ACL changed")
        for worker in list(self.workers.values()):
            reason = admission.revoked_worker(worker.key, worker.service.name)
            if reason is None:
                continue
            log.warning("worker %s cut off: %s", worker.worker_id, reason)
            self.counters["curve_revoked_workers"] += 1
            self._purge(worker, reason, now, disconnect=True)
        admission.forget_revoked_clients()
        dropped = 0
        for req in list(self.requests.values()):
            if req.done or req.client_key is None or admission.allows(req.client_key):
                continue
            if req.worker is None:
                self._dequeue(req)
            else:  # keep the workers' slots until their (dropped) replies, as for a deadline
                self._hold_other_slots(req, None, req.deadline + self.settings.release_grace)
            self._finish(req)  # no answer: the key is revoked
            dropped += 1
            self._forget_if_idle(req.service)
        if dropped:
            log.warning("dropped %d request(s) of revoked client key(s)", dropped)


# ---------------------------------------------------------------------- helpers

_DISCONNECT = WorkerCommand.DISCONNECT
#: a plain function call, cheaper than int()'s type call on the dispatch path
_floor = math.floor


def _to_worker(worker: Worker, command: WorkerCommand) -> Outgoing:
    return (worker.identity, mdp.to_worker(worker.framing, command), None)


def _describe(frames: list[Any]) -> str:
    """A short, safe description of a message's frames for a log line."""
    shown = [
        repr(bytes(f[:16]) if isinstance(f, bytes) else bytes(f.buffer[:16])) for f in frames[:4]
    ]
    more = f", +{len(frames) - 4} more" if len(frames) > 4 else ""
    return f"{len(frames)} frame(s): {', '.join(shown)}{more}"


describe_frames = _describe
