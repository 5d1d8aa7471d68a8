"""The Majordomo (MDP/0.2, RFC 18) broker loop: one ROUTER socket, clients and workers.

Reads top to bottom as: socket setup, the loop (wait in recv, drain, timers when due), then
one handler per kind of message, then dispatch, purge, timers and shutdown.

What it guarantees (docs/design.md "Decisions and why", docs/interfaces.md):

* every request gets exactly one final answer: the worker's reply or a broker error reply
  (``no_worker``, ``deadline_exceeded``, ``overloaded``, ``worker_lost``, ``bad_request``,
  ``internal``);
* a worker sees an opaque *ticket* in the client-address frame; the broker maps it back to
  the client, so a reply for a request that is already answered, or from a purged worker,
  is recognised and dropped;
* dispatch is O(1) in the number of services and workers (see ``broker.state``); heartbeat
  and expiry work is proportional to the number of workers, through a deque of heartbeat
  due times and an ordered dict of workers by last activity (no scan per message);
* a malformed message is logged (rate-limited), counted, and never crashes the loop or
  leaks a worker slot.

Hot-path habits (why: docs/design.md): frames are sent with a loop of
``send(frame, SNDMORE)``, the socket is drained with ``NOBLOCK`` until ``zmq.Again`` on each
wake-up, payload frames are received and forwarded as ``zmq.Frame`` objects (no copy), and
nothing is logged per message. Replies and requests for workers are queued while a run of
messages is handled and sent in bursts (:meth:`Broker._flush`), which spares most of
libzmq's wake-ups of its I/O thread.
"""

from __future__ import annotations

import errno
import heapq
import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from mole.broker.curve import enable_curve, peer_key
from mole.broker.ratelog import RateLimitedLog
from mole.broker.settings import BrokerSettings
from mole.broker.state import Request, Service, Worker, service_status, worker_status
from mole.protocol import mdp
from mole.protocol.envelope import MAX_HEADER_BYTES, VERSION, ReplyHeader, pack
from mole.protocol.errors import ErrorCode

log = logging.getLogger("mole.broker")

BROKER_VERSION = "0.1.0"

C_HDR = mdp.CLIENT_HEADER
W_HDR = mdp.WORKER_HEADER
C_REQUEST = mdp.CLIENT_REQUEST
C_PARTIAL = mdp.CLIENT_PARTIAL
C_FINAL = mdp.CLIENT_FINAL
W_READY = mdp.W_READY
W_REQUEST = mdp.W_REQUEST
W_PARTIAL = mdp.W_PARTIAL
W_FINAL = mdp.W_FINAL
W_HEARTBEAT = mdp.W_HEARTBEAT
W_DISCONNECT = mdp.W_DISCONNECT
EMPTY = b""
MMI_PREFIX = mdp.MMI_PREFIX.encode()
MMI_SERVICE = mdp.MMI_SERVICE.encode()
MMI_STATUS = mdp.MMI_STATUS.encode()

# Plain ints: pyzmq's flags are enum members, and building one per call shows in profiles.
SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)
FIRST = SNDMORE | NOBLOCK

#: Messages handled per wake-up before timers get a turn (keeps deadlines and heartbeats
#: on time under a flood).
DRAIN_BATCH = 1000
#: Queued outgoing messages that make the loop send them before it handles the next one
#: (see Broker._flush). The queue is also sent whenever the socket has nothing waiting.
SEND_BATCH = 32
#: Longest sleep of the loop: how soon a stop request (SIGTERM) is noticed when idle.
MAX_POLL_MS = 200
#: How late (ms) the loop's wait may end for a timer before the wait is re-armed.
TIMER_SLACK_MS = 2
#: Frames turned into ``bytes`` (protocol header, command, service/ticket, empty/header);
#: later frames are payload and stay ``zmq.Frame`` objects, forwarded without a copy.
COPIED_FRAMES = 4
#: msgpack of the key/value ``"ok": false`` in a reply header: a cheap pre-check before
#: decoding a reply header to count errors.
_OK_FALSE = b"\xa2ok\xc2"
_COMMAND_NAMES = {bytes([c]): c.name for c in mdp.WorkerCommand}
#: Under CURVE (ROUTER_HANDOVER off): libzmq PING interval and timeout of the broker's
#: connections. The timeout must stay below a client's own heartbeat timeout
#: (protocol.client: 3 s), so the broker has dropped a dead connection before the client
#: reconnects under the same routing id (a connection under a routing id still in use is
#: refused for good).
ZMTP_PING_INTERVAL = 0.5
ZMTP_PING_TIMEOUT = 1.5
#: Client routing ids whose CURVE key the broker remembers (least recently heard forgotten
#: first; a forgotten client's pending replies are dropped, so keep it generous).
CLIENT_KEYS_LIMIT = 100_000


class Broker:
    """The broker: bind it, then :meth:`run` it until :meth:`stop` (or a signal) ends it.

    Args:
        settings: tuning, see :class:`broker.settings.BrokerSettings`.
        context: the ZeroMQ context (a new one by default).
        clock: monotonic seconds; injected so tests can reason about time.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        context: zmq.Context | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings.validated()
        self._ctx = context or zmq.Context()
        self._own_ctx = context is None
        self._clock = clock
        self.socket: zmq.Socket | None = None
        self.endpoint: str | None = None
        self.started = clock()
        self.broker_id = os.urandom(4).hex()
        self._ticket_prefix = bytes.fromhex(self.broker_id)
        self._ticket_seq = 0
        self._stopping = False
        self.workers: dict[bytes, Worker] = {}
        self.services: dict[bytes, Service] = {}
        self.requests: dict[bytes, Request] = {}  # ticket -> live (unanswered) request
        self.by_key: dict[tuple[bytes, str], Request] = {}  # (client, request id) -> request
        self.queued_total = 0
        self._deadlines: list[tuple[float, bytes]] = []  # heap; stale entries skipped
        self._releases: list[tuple[float, bytes, bytes]] = []  # (when, worker, ticket)
        self._heartbeats: deque[tuple[float, Worker]] = deque()  # sorted by due time
        self._activity: OrderedDict[bytes, Worker] = OrderedDict()  # by last message
        self.counters: dict[str, Any] = {
            "requests": 0,
            "replies": 0,
            "errors_by_code": {},
            "malformed": 0,
            "protocol_errors": 0,
            "redispatched": 0,
            "late_replies": 0,
            "duplicates": 0,
            "dropped_sends": 0,
            "workers_registered": 0,
            "workers_purged": 0,
            "internal_errors": 0,
            "unknown_worker_messages": 0,
            "curve_refused": 0,
            "curve_revoked_workers": 0,
        }
        self._warn = RateLimitedLog(log)
        self._tick = self.settings.heartbeat_interval / 10
        self._authenticator = None  # the ZAP thread when CURVE keys are allow-listed
        self._keyring = None  # broker.curve.KeyRing: allowed keys and ACL, re-read each beat
        self._bind_keys = bool(self.settings.curve_secret and self.settings.curve_allow)
        #: client routing id -> CURVE key its connection last used (insertion order = least
        #: recently heard first, bounded); a reply goes out only under the asking key
        self._client_keys: OrderedDict[bytes, str] = OrderedDict()
        self._next_key_check = math.inf
        self._wake_at = 0.0  # when the loop next runs its timers (see run)
        #: messages to send, in order: (peer, command, address, body, request); see _flush
        self._outbox: list[tuple] = []
        self._default_deadline = self.settings.default_deadline
        self._max_deadline = self.settings.max_deadline

    # ------------------------------------------------------------------ socket and loop

    def bind(self) -> str:
        """Create the ROUTER socket and bind it; return the bound endpoint."""
        s = self.settings
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unreachable peer -> EHOSTUNREACH, not loss
        if s.curve_secret:
            # Under CURVE, handover would let another allowed key take a connected peer's
            # routing id over and receive its replies without sending anything. Without
            # it a second connection with a routing id in use is refused -- and libzmq
            # never retries such a refused connection (it stays open, silent). So the
            # broker must drop a dead connection *before* its peer gives up on it and
            # reconnects under the same routing id: libzmq heartbeats with a timeout below
            # the Client's (3 s by default; workers take a new routing id per connection).
            sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
            sock.setsockopt(zmq.HEARTBEAT_IVL, int(ZMTP_PING_INTERVAL * 1000))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(ZMTP_PING_TIMEOUT * 1000))
        else:
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting peer keeps its routing id
        sock.setsockopt(zmq.MAXMSGSIZE, s.max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, s.hwm)
        sock.setsockopt(zmq.RCVHWM, s.hwm)
        sock.setsockopt(zmq.LINGER, 1000)
        try:
            if s.curve_secret:
                self._authenticator, self._keyring = enable_curve(sock, s, self._ctx)
                if self._keyring is not None:
                    self._next_key_check = self._clock() + s.heartbeat_interval
            sock.bind(s.bind)
        except Exception:
            sock.close(0)
            self._stop_authenticator()
            raise
        self.socket = sock
        # the backend's methods directly: pyzmq's Python wrappers cost ~0.2 us per frame
        base = getattr(zmq.backend, "Socket", None)
        if base is not None and isinstance(sock, base):
            self._recv = base.recv.__get__(sock)
            self._sendf = base.send.__get__(sock)
        else:
            self._recv, self._sendf = sock.recv, sock.send
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info(
            "broker %s listening on %s (heartbeat %.2fs x %d, queue limit %d)",
            self.broker_id,
            self.endpoint,
            s.heartbeat_interval,
            s.liveness,
            s.queue_limit,
        )
        return self.endpoint

    def stop(self) -> None:
        """Ask the loop to shut down (safe from a signal handler)."""
        self._stopping = True

    def run(self) -> None:
        """Serve until :meth:`stop`; then disconnect workers, answer waiting requests, close.

        The loop waits in a blocking ``recv`` bounded by ``RCVTIMEO`` (the time to the next
        timer) rather than in ``zmq.Poller``: with one socket the poller only adds work per
        wake-up (a Python item list, and libzmq asking the socket's events twice), which
        was a fifth of the loop's time under load. Timers run only when ``_wake_at`` has
        passed; whatever schedules a timer earlier than that moves ``_wake_at`` forward
        (:meth:`_wake_by`), so a busy loop does not scan the timer queues per message.
        """
        if self.socket is None:
            self.bind()
        clock = self._clock
        recv = self._recv
        set_timeout = self.socket.setsockopt
        armed = -1  # the RCVTIMEO the socket has now
        try:
            while not self._stopping:
                now = clock()
                if now >= self._wake_at:
                    self._run_timers(now)
                    self._flush()
                    self._wake_at = now + self._poll_timeout_ms(now) / 1000
                timeout = int((self._wake_at - now) * 1000) + 1
                # a wait that ends early is harmless (the loop waits again); one that ends
                # more than TIMER_SLACK_MS late is not; re-arming costs a system call
                if armed > timeout + TIMER_SLACK_MS or armed < 0 or timeout > 2 * armed + 1:
                    set_timeout(zmq.RCVTIMEO, timeout)
                    armed = timeout
                try:
                    identity = recv(0)
                except zmq.Again:
                    continue
                self._drain(identity)
        finally:
            self._shutdown()

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        self._stop_authenticator()
        if self._own_ctx:
            self._ctx.term()

    def _stop_authenticator(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None

    def _wake_by(self, when: float) -> None:
        """A timer is due at ``when``: make sure the loop wakes up by then."""
        if when < self._wake_at:
            self._wake_at = when

    def _poll_timeout_ms(self, now: float) -> int:
        """Sleep until the next timer is due (or MAX_POLL_MS).

        Heartbeat and expiry times are rounded up to a tick of a tenth of the heartbeat
        interval, so with many workers their heartbeats go out in batches, one wake-up per
        tick rather than one per worker. Deadlines stay exact.
        """
        due = now + MAX_POLL_MS / 1000
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
        due = min(due, self._next_key_check)
        return max(0, int((due - now) * 1000) + 1)

    def _drain(self, identity: bytes | None = None) -> None:
        """Handle up to DRAIN_BATCH messages, receiving until the socket is empty.

        ``identity`` is the routing id of a message the loop's wait already received. The
        routing id (which always has more parts after it) is received as ``bytes``; every
        later frame as a ``zmq.Frame``, whose ``more`` flag is cheaper to read than the
        RCVMORE option. The first few are turned into ``bytes`` for parsing and the payload
        frames are kept as they are. The first frame after the routing id stays a Frame as
        ``first`` too: it carries the connection's properties (CURVE key, peer address).
        """
        recv = self._recv
        limit = self.settings.max_message_bytes
        outbox = self._outbox
        for _ in range(DRAIN_BATCH):
            if identity is None:
                try:
                    identity = recv(NOBLOCK)
                except zmq.Again:
                    break
            first = frame = recv(0, False)
            frames: list = [frame]
            size = len(frame)
            while frame.more:
                frame = recv(0, False)
                size += len(frame)
                frames.append(frame)
            for i in range(min(len(frames), COPIED_FRAMES)):
                frames[i] = frames[i].bytes
            try:
                if size > limit:
                    self._oversized(identity, frames, size)
                elif len(frames) >= 3 and frames[0] == C_HDR:
                    self._on_client(identity, frames, first)
                elif len(frames) >= 2 and frames[0] == W_HDR:
                    self._on_worker(identity, frames, first)
                elif frames and frames[0] in (C_HDR, W_HDR):
                    self._malformed(
                        identity,
                        f"{len(frames)} frame(s) after the routing id is "
                        "too few for an MDP message",
                        frames,
                    )
                else:
                    self._malformed(identity, "neither an MDPC02 nor an MDPW02 message", frames)
            except Exception:  # a bug must not take the broker down; count and go on
                self.counters["internal_errors"] += 1
                log.exception("internal error handling a message from %s", identity.hex())
            identity = None
            if len(outbox) >= SEND_BATCH:
                self._flush()
                outbox = self._outbox
        self._flush()

    # ------------------------------------------------------------------ sending

    def _send(self, identity: bytes, frames: list) -> bool:
        """Send one message to a peer; False when it is gone or its queue is full."""
        send = self._sendf
        try:
            send(identity, FIRST)
        except zmq.Again:
            self.counters["dropped_sends"] += 1
            return False
        except zmq.ZMQError as err:
            if err.errno != errno.EHOSTUNREACH:
                raise
            self.counters["dropped_sends"] += 1
            return False
        last = len(frames) - 1
        for i, frame in enumerate(frames):
            send(frame, SNDMORE if i < last else 0)
        return True

    def _send_client(self, req: Request, command: bytes, body: list) -> None:
        """Queue ``[MDPC02, command, service, *body]`` for the request's client."""
        if req.client_key is not None and not self._deliverable(req):
            return
        self._outbox.append((req.client, command, req.service.name_bytes, body, None))

    def _flush(self) -> None:
        """Send the queued messages, in the order they were queued.

        Client replies and requests for workers are queued while the loop handles a run of
        messages and sent together: when the socket has nothing more waiting, after
        SEND_BATCH of them, and after the timers. libzmq wakes its I/O thread (a system
        call on this thread, and often a context switch on a small machine) for the first
        message of a burst to a peer, not for each; sending each as it was made cost about
        a fifth of the broker's CPU per request under load (40 against 31 us, bench_bus).

        Nothing waits longer than the handling of the messages already received, and a
        lone request goes out as soon as it is handled. A request whose worker was purged
        or that was answered in the meantime is skipped (the purge re-queued or answered
        it); one whose worker turns out unreachable goes back to the front of its queue,
        without counting as an attempt, and that worker is purged.
        """
        send = self._sendf
        while self._outbox:
            box = self._outbox
            self._outbox = []
            for peer, command, address, body, req in box:
                try:
                    if req is None:  # to a client: [MDPC02, command, service, *body]
                        try:
                            send(peer, FIRST)
                        except zmq.ZMQError as err:  # the client is gone, or its queue is full
                            if err.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                                raise
                            self.counters["dropped_sends"] += 1
                            continue
                        send(C_HDR, SNDMORE)
                        send(command, SNDMORE)
                        if not body:
                            send(address, 0)
                            continue
                        send(address, SNDMORE)
                    else:  # to worker ``peer``: [MDPW02, REQUEST, ticket, "", *body]
                        if req.worker is not peer or req.done:
                            continue
                        try:
                            send(peer.identity, FIRST)
                        except zmq.ZMQError as err:  # gone (EHOSTUNREACH) or pipe full
                            if err.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                                raise
                            self._unreachable(peer, req)
                            continue
                        send(W_HDR, SNDMORE)
                        send(command, SNDMORE)
                        send(address, SNDMORE)
                        send(EMPTY, SNDMORE)
                    last = len(body) - 1
                    for i in range(last):
                        send(body[i], SNDMORE)  # Frames go out without a copy
                    send(body[last], 0)
                except Exception:  # as for a message: count, log, and send the rest
                    self.counters["internal_errors"] += 1
                    log.exception("internal error sending to %s", _peer_name(peer))

    def _deliverable(self, req: Request) -> bool:
        """Under CURVE: is the routing id still held by the key that asked, still allowed?

        Another key that got the routing id (after the asker's connection closed) or a
        revoked key gets nothing.
        """
        key = req.client_key
        if self._client_keys.get(req.client) == key and self._keyring.allows(key):
            return True
        self.counters["curve_refused"] += 1
        return False

    def _answer_error(self, req: Request, code: ErrorCode, message: str) -> None:
        """Finish ``req`` with a broker error reply (its one final answer)."""
        if req.header is not None:
            body = [ReplyHeader(req.request_id, False, code.value, message).encode()]
        else:
            body = [pack({"error": code.value, "message": message})]
        self._finish(req)
        req.service.errors += 1
        self._count_error(code)
        self._send_client(req, C_FINAL, body)

    def _count_error(self, code: ErrorCode | str) -> None:
        by_code = self.counters["errors_by_code"]
        by_code[str(code)] = by_code.get(str(code), 0) + 1

    def _finish(self, req: Request) -> None:
        """Mark ``req`` answered and forget it (its worker slot is freed separately)."""
        req.done = True
        self.requests.pop(req.ticket, None)
        if req.request_id is not None:
            key = (req.client, req.request_id)
            if self.by_key.get(key) is req:
                del self.by_key[key]
        self.counters["replies"] += 1

    def _reply_direct(
        self, client: bytes, service: bytes, header: dict | None, code: ErrorCode, message: str
    ) -> None:
        """Error answer to a message that never became a tracked request."""
        if header is not None:
            body = ReplyHeader(str(header["id"]), False, code.value, message).encode()
        else:
            body = pack({"error": code.value, "message": message})
        self._count_error(code)
        self._outbox.append((client, C_FINAL, service, [body], None))

    # ------------------------------------------------------------------ clients

    def _on_client(self, client: bytes, frames: list, first: zmq.Frame | None = None) -> None:
        key = None
        if self._bind_keys:
            key = self._client_curve_key(client, first)
            if key is _REFUSED:
                return None
        if frames[1] != C_REQUEST:
            return self._malformed(
                client,
                f"client command {bytes(frames[1][:4])!r} (a client may only send REQUEST 0x01)",
                frames,
            )
        if len(frames) < 4:
            return self._malformed(client, "client REQUEST without a body", frames)
        service_name = frames[2]
        body = frames[3:]
        header = None
        deadline_s = self._default_deadline
        if len(body) >= 2:
            header = _request_header(body[0])
            if header is not None:
                if header is _BAD_HEADER:
                    return self._bad_header(client, service_name, body[0])
                ttl = header.get("ttl")
                if ttl is not None:
                    deadline_s = ttl / 1000.0
                    if deadline_s > self._max_deadline:
                        deadline_s = self._max_deadline
        service = self.services.get(service_name)
        if service is None:
            if service_name.startswith(MMI_PREFIX):
                return self._on_mmi(client, service_name, body, header)
            if len(service_name) > mdp.MAX_SERVICE_LENGTH or not _utf8(service_name):
                self._malformed(
                    client,
                    f"service name is not UTF-8 of at most {mdp.MAX_SERVICE_LENGTH} bytes",
                    frames,
                )
                return self._reply_direct(
                    client,
                    service_name,
                    header,
                    ErrorCode.BAD_REQUEST,
                    f"service name must be UTF-8, at most {mdp.MAX_SERVICE_LENGTH} bytes",
                )
            service = self.services[service_name] = Service(bytes(service_name))
        self.counters["requests"] += 1
        request_id = None
        if header is not None:
            request_id = header["id"]
            if type(request_id) is not str:
                request_id = str(request_id)
            if (client, request_id) in self.by_key:
                self.counters["duplicates"] += 1  # the first copy is still live: it will answer
                return None
        now = self._clock()
        self._ticket_seq += 1
        ticket = self._ticket_prefix + self._ticket_seq.to_bytes(8, "big")
        req = Request(ticket, client, service, request_id, header, body, now + deadline_s, now)
        if request_id is not None:
            self.by_key[(client, request_id)] = req
        if key is not None:
            req.client_key = key
        if deadline_s <= 0:
            self._answer_error(
                req, ErrorCode.DEADLINE_EXCEEDED, "request arrived with no time left (ttl <= 0)"
            )
            return self._forget_if_idle(service)
        self.requests[ticket] = req
        heapq.heappush(self._deadlines, (req.deadline, ticket))
        self._wake_by(req.deadline)
        available = service.available
        if available and not service.queue:
            identity, worker = available.popitem(last=False)
            self._assign(worker, req)
            if len(worker.in_flight) < worker.slots:
                available[identity] = worker
            return None
        if not self._enqueue(req, front=False):
            return self._forget_if_idle(service)
        self._dispatch(service)
        return None

    def _client_curve_key(self, client: bytes, first: zmq.Frame | None) -> str | object:
        """Under an allow-list: the key the client's message came under, or _REFUSED.

        Remembers which key holds the routing id, so a reply goes out only under it.
        """
        key = peer_key(first) if first is not None else None
        if not self._keyring.allows(key):  # revoked since it connected: refuse silently
            self.counters["curve_refused"] += 1
            self._warn.log(
                logging.WARNING,
                "request from client %s under a CURVE key "
                "that is no longer allow-listed (%s): dropped",
                client.hex(),
                self._keyring.name(key),
            )
            return _REFUSED
        keys = self._client_keys
        if keys.get(client) != key:
            keys.pop(client, None)
            keys[client] = key
            if len(keys) > CLIENT_KEYS_LIMIT:
                keys.popitem(last=False)
        else:
            keys.move_to_end(client)
        return key

    def _bad_header(self, client: bytes, service: bytes, frame: bytes) -> None:
        self.counters["malformed"] += 1
        self._warn.log(
            logging.WARNING, "request header from client %s has bad field types", client.hex()
        )
        try:
            header = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        except Exception:
            header = None
        self._reply_direct(
            client,
            service,
            header,
            ErrorCode.BAD_REQUEST,
            "request header fields 'ttl' and 'attempt' must be integers",
        )

    def _forget_if_idle(self, service: Service) -> None:
        """Drop a service nothing refers to, so invented names cannot grow the tables."""
        if service.idle() and self.services.get(service.name_bytes) is service:
            del self.services[service.name_bytes]

    def _enqueue(self, req: Request, *, front: bool) -> bool:
        """Put ``req`` in its service's queue; answer ``overloaded`` when it is full.

        Re-dispatched requests (``front``) skip the bound: they were admitted already.
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

    # ------------------------------------------------------------------ MMI (RFC 8)

    def _on_mmi(self, client: bytes, service: bytes, body: list, header: dict | None) -> None:
        if service == MMI_SERVICE:
            name = body[1] if header is not None else body[0]
            known = self.services.get(bytes(name))
            answer = b"200" if known is not None and known.workers else b"404"
        elif service == MMI_STATUS:
            answer = pack(self.status())
        else:
            answer = b"501"
        if header is not None:
            reply = [ReplyHeader(str(header["id"])).encode(), answer]
        else:
            reply = [answer]
        self._outbox.append((client, C_FINAL, service, reply, None))

    def status(self) -> dict[str, Any]:
        """The ``mmi.status`` document (format in docs/interfaces.md)."""
        now = self._clock()
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
            },
            "services": {svc.name: service_status(svc) for svc in self.services.values()},
            "workers": [worker_status(w, now) for w in self.workers.values()],
            "counters": counters,
        }

    # ------------------------------------------------------------------ workers

    def _on_worker(self, identity: bytes, frames: list, first: zmq.Frame) -> None:
        command = frames[1]
        worker = self.workers.get(identity)
        key = None
        if self._bind_keys:
            key = peer_key(first)
            if not self._keyring.allows(key):  # revoked since it connected
                return self._refuse_worker(identity, worker, key)
        if worker is not None:
            if self._bind_keys and key != worker.key:
                # ROUTER_HANDOVER let another allowed key take this routing id over
                return self._violation(
                    identity,
                    worker,
                    "message under another CURVE key than the worker registered with",
                    frames[:2],
                )
            worker.last_seen = self._clock()
            self._activity.move_to_end(identity)
        if command in (W_FINAL, W_PARTIAL):
            if len(frames) < 4 or not frames[2] or frames[3] != EMPTY:
                return self._violation(
                    identity,
                    worker,
                    f"{_COMMAND_NAMES[command]} needs a client address frame and an empty frame",
                    frames,
                )
            if worker is None:
                return self._unknown_worker(identity, command)
            return self._on_reply(worker, frames, command == W_FINAL)
        if command == W_HEARTBEAT:
            if len(frames) != 2:
                return self._violation(identity, worker, "HEARTBEAT with extra frames", frames)
            if worker is None:
                return self._unknown_worker(identity, command)
            return None
        if command == W_READY:
            return self._on_ready(identity, worker, frames, _peer_address(first), key)
        if command == W_DISCONNECT:
            if worker is not None:
                log.info("worker %s (%s) disconnected", worker.worker_id, worker.service.name)
                self._purge(worker, "it sent DISCONNECT", send_disconnect=False)
            return None
        if command == W_REQUEST:
            return self._violation(identity, worker, "a worker may not send REQUEST", frames)
        return self._violation(
            identity, worker, f"unknown worker command {bytes(command[:4])!r}", frames
        )

    def _on_reply(self, worker: Worker, frames: list, final: bool) -> None:
        ticket = frames[2]
        req = worker.in_flight.pop(ticket, None) if final else worker.in_flight.get(ticket)
        if req is None:
            self.counters["late_replies"] += 1  # not (or no longer) this worker's request
            return None
        body = frames[4:]
        if final:
            service = worker.service
            service.in_flight -= 1
            if not req.done:
                self._finish(req)
                worker.served += 1
                service.served += 1
                if body and len(body[0]) <= MAX_HEADER_BYTES and _OK_FALSE in _frame_bytes(body[0]):
                    self._count_worker_error(service, body[0])
                if req.client_key is None or self._deliverable(req):
                    self._outbox.append((req.client, C_FINAL, service.name_bytes, body, None))
            else:
                self.counters["late_replies"] += 1
            if len(worker.in_flight) == worker.slots - 1:  # it was full: free again
                service.available[worker.identity] = worker
            if service.queue:
                self._dispatch(service)
        elif not req.done and (req.client_key is None or self._deliverable(req)):
            self._outbox.append((req.client, C_PARTIAL, req.service.name_bytes, body, None))
        return None

    def _count_worker_error(self, service: Service, frame) -> None:
        try:
            header = msgpack.unpackb(_frame_bytes(frame), raw=False, strict_map_key=False)
        except Exception:
            return
        if isinstance(header, dict) and header.get("ok") is False:
            service.errors += 1
            self._count_error(str(header.get("code", ErrorCode.INTERNAL.value)))

    def _on_ready(
        self,
        identity: bytes,
        worker: Worker | None,
        frames: list,
        address: str | None,
        key: str | None,
    ) -> None:
        if worker is not None:
            return self._violation(
                identity, worker, "READY from an already registered worker", frames
            )
        if not 3 <= len(frames) <= 4:
            return self._violation(
                identity, None, "READY needs a service frame and at most one metadata frame", frames
            )
        name = frames[2]
        if not name or len(name) > mdp.MAX_SERVICE_LENGTH or not _utf8(name):
            return self._violation(
                identity,
                None,
                f"READY service name must be UTF-8 of 1 to {mdp.MAX_SERVICE_LENGTH} bytes",
                frames,
            )
        if name.startswith(MMI_PREFIX):
            return self._violation(
                identity,
                None,
                f"a worker may not register {name!r}: mmi.* services belong to the broker",
                frames,
            )
        if self._keyring is not None and not self._keyring.may_register(key, name.decode()):
            self.counters["curve_refused"] += 1
            self._warn.log(
                logging.WARNING,
                "worker %s under %s may not register %r (not in the CURVE ACL %s): sent DISCONNECT",
                identity.hex(),
                self._keyring.name(key),
                name.decode(),
                self._keyring.acl_file,
            )
            self._send(identity, [W_HDR, W_DISCONNECT])
            return None
        metadata: dict = {}
        slots = 1
        if len(frames) == 4:
            try:
                metadata = msgpack.unpackb(frames[3], raw=False, strict_map_key=False)
            except Exception:
                metadata = None
            if not isinstance(metadata, dict):
                return self._violation(
                    identity, None, "READY metadata frame is not a msgpack map", frames
                )
            raw_slots = metadata.get("slots", 1)
            if (
                not isinstance(raw_slots, int)
                or isinstance(raw_slots, bool)
                or not 1 <= raw_slots <= self.settings.max_slots
            ):
                return self._violation(
                    identity,
                    None,
                    "READY metadata 'slots' must be an "
                    f"integer from 1 to {self.settings.max_slots}",
                    frames,
                )
            slots = raw_slots
        service = self.services.get(name)
        if service is None:
            service = self.services[name] = Service(bytes(name))
        now = self._clock()
        worker = Worker(identity, service, slots, metadata, address, now)
        worker.key = key
        self.workers[identity] = worker
        self._activity[identity] = worker
        self._heartbeats.append((now + self.settings.heartbeat_interval, worker))
        self._wake_by(now + min(self.settings.heartbeat_interval, self.settings.expiry))
        service.workers[identity] = worker
        service.available[identity] = worker
        self.counters["workers_registered"] += 1
        log.info(
            "worker %s registered for %r with %d slot(s) from %s",
            worker.worker_id,
            service.name,
            slots,
            address or "unknown address",
        )
        self._dispatch(service)
        return None

    def _unknown_worker(self, identity: bytes, command: bytes) -> None:
        """RFC 18: anything but READY from an unregistered worker gets DISCONNECT.

        This is also how workers learn that the broker restarted: they reconnect and
        send READY again.
        """
        self.counters["unknown_worker_messages"] += 1
        self._warn.log(
            logging.DEBUG,
            "%s from unregistered worker %s: sent DISCONNECT",
            _COMMAND_NAMES.get(command, "?"),
            identity.hex(),
        )
        self._send(identity, [W_HDR, W_DISCONNECT])

    def _refuse_worker(self, identity: bytes, worker: Worker | None, key: str | None) -> None:
        """A worker message under a key no longer allow-listed: purge it, DISCONNECT."""
        self.counters["curve_refused"] += 1
        self._warn.log(
            logging.WARNING,
            "worker %s sent under %s, which is not allow-listed (revoked): sent DISCONNECT",
            identity.hex(),
            self._keyring.name(key),
        )
        if worker is not None:
            self._purge(worker, "its CURVE key was revoked", send_disconnect=False)
        self._send(identity, [W_HDR, W_DISCONNECT])

    def _violation(self, identity: bytes, worker: Worker | None, reason: str, frames: list) -> None:
        """A worker broke the protocol: count, log, purge it, and send DISCONNECT."""
        self.counters["protocol_errors"] += 1
        self.counters["malformed"] += 1
        self._warn.log(
            logging.WARNING,
            "protocol violation by worker %s: %s (%s); sent DISCONNECT",
            identity.hex(),
            reason,
            _describe(frames),
        )
        if worker is not None:
            self._purge(worker, f"protocol violation: {reason}", send_disconnect=False)
        self._send(identity, [W_HDR, W_DISCONNECT])

    def _malformed(self, identity: bytes, reason: str, frames: list) -> None:
        self.counters["malformed"] += 1
        self._warn.log(
            logging.WARNING,
            "malformed message from %s: %s (%s)",
            identity.hex(),
            reason,
            _describe(frames),
        )
        worker = self.workers.get(identity)
        if worker is not None:  # a registered worker that sent garbage broke the protocol
            self.counters["protocol_errors"] += 1
            self._purge(worker, f"malformed message: {reason}", send_disconnect=True)

    def _oversized(self, identity: bytes, frames: list, size: int) -> None:
        limit = self.settings.max_message_bytes
        self._malformed(
            identity, f"message of {size} bytes exceeds the limit of {limit}", frames[:3]
        )
        if (
            len(frames) >= 3
            and frames[0] == C_HDR
            and frames[1] == C_REQUEST
            and self.workers.get(identity) is None
        ):
            header = _request_header(frames[3]) if len(frames) >= 5 else None
            if header is _BAD_HEADER:
                header = None
            self._reply_direct(
                identity,
                frames[2],
                header,
                ErrorCode.BAD_REQUEST,
                f"request of {size} bytes exceeds the broker's limit of "
                f"{limit} bytes (MOLE_BROKER_MAX_MESSAGE_BYTES)",
            )

    # ------------------------------------------------------------------ dispatch

    def _assign(self, worker: Worker, req: Request, *, waited: bool = False) -> None:
        """Give ``req`` to ``worker`` and queue it for sending (:meth:`_flush`).

        The caller has taken the worker out of ``service.available`` and puts it back when
        it still has a free slot. A request that ``waited`` in the queue (or is being
        re-dispatched) gets a fresh header: the time it has left, and its attempt number.
        """
        body = req.body
        if (waited or req.dispatches) and req.header is not None:
            body = [self._fresh_header(req), *body[1:]]
        self._outbox.append((worker, W_REQUEST, req.ticket, body, req))
        req.dispatches += 1
        req.worker = worker
        worker.in_flight[req.ticket] = req
        worker.service.in_flight += 1

    def _unreachable(self, worker: Worker, req: Request) -> None:
        """Sending ``req`` to ``worker`` failed: take it back, queue it first, purge the worker.

        The failed send does not count as an attempt; the purge re-dispatches the queue.
        """
        del worker.in_flight[req.ticket]
        worker.service.in_flight -= 1
        req.dispatches -= 1
        req.worker = None
        self._enqueue(req, front=True)
        self._purge(worker, "it is unreachable", send_disconnect=False)

    def _fresh_header(self, req: Request) -> bytes:
        """Our header with the time left and the attempt number as of this dispatch."""
        header = dict(req.header)
        header["ttl"] = max(1, int((req.deadline - self._clock()) * 1000))
        header["attempt"] = int(header.get("attempt", 0)) + req.dispatches
        return pack(header)

    def _dispatch(self, service: Service) -> None:
        """Give waiting requests to free workers of ``service`` until one side runs out."""
        queue = service.queue
        available = service.available
        while queue and available:
            _, req = queue.popitem(last=False)
            self.queued_total -= 1
            if req.done:
                continue
            identity, worker = available.popitem(last=False)
            self._assign(worker, req, waited=True)
            if len(worker.in_flight) < worker.slots:
                available[identity] = worker

    # ------------------------------------------------------------------ purge

    def _purge(self, worker: Worker, reason: str, *, send_disconnect: bool) -> None:
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
        now = self._clock()
        redispatched = lost = 0
        for req in reversed(list(worker.in_flight.values())):
            service.in_flight -= 1
            if req.done:
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
        worker.in_flight.clear()
        self.counters["redispatched"] += redispatched
        log.info(
            "worker %s of %r purged: %s; %d request(s) re-dispatched, %d lost",
            worker.worker_id,
            service.name,
            reason,
            redispatched,
            lost,
        )
        if send_disconnect:
            self._send(identity, [W_HDR, W_DISCONNECT])
        self._dispatch(service)
        self._forget_if_idle(service)

    # ------------------------------------------------------------------ timers

    def _run_timers(self, now: float) -> None:
        s = self.settings
        if now >= self._next_key_check:
            self._next_key_check = now + s.heartbeat_interval
            if self._keyring.refresh():
                self._apply_key_changes()
        # heartbeats: each worker once per interval, spread by registration time
        beats = self._heartbeats
        while beats and beats[0][0] <= now:
            _, worker = beats.popleft()
            if not worker.alive:
                continue
            if self._send(worker.identity, [W_HDR, W_HEARTBEAT]):
                beats.append((now + s.heartbeat_interval, worker))
            else:
                self._purge(worker, "it is unreachable", send_disconnect=False)
        # expiry: the least recently heard-from workers are at the front
        activity = self._activity
        expiry = s.expiry
        while activity:
            worker = next(iter(activity.values()))
            if worker.last_seen + expiry > now:
                break
            self._purge(worker, f"silent for {now - worker.last_seen:.2f}s", send_disconnect=True)
        # deadlines
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, ticket = heapq.heappop(heap)
            req = self.requests.get(ticket)
            if req is None or req.deadline != deadline:
                continue
            self._expire(req, now)
        if len(heap) > 4096 and len(heap) > 4 * len(self.requests):
            self._compact_deadlines()
        # slots held for requests answered at their deadline, whose reply never came
        releases = self._releases
        while releases and releases[0][0] <= now:
            _, identity, ticket = heapq.heappop(releases)
            worker = self.workers.get(identity)
            if worker is None or ticket not in worker.in_flight:
                continue
            del worker.in_flight[ticket]
            worker.service.in_flight -= 1
            if len(worker.in_flight) == worker.slots - 1:
                worker.service.available[identity] = worker
            self._dispatch(worker.service)

    def _apply_key_changes(self) -> None:
        """The allow-list or ACL changed: cut off every peer it no longer admits.

        The authenticator already refuses new connections with a removed key (it reads
        the key ring); a connection made before stays open in libzmq, so here its worker is
        purged (its requests re-dispatched as for a dead one) and told DISCONNECT, and the
        requests of a revoked client are dropped unanswered (nothing more goes to that key).
        """
        ring = self._keyring
        log.info("CURVE allow-list/ACL changed: %d key(s) allowed", len(ring.keys))
        for worker in list(self.workers.values()):
            if not ring.allows(worker.key):
                reason = f"its CURVE key ({ring.name(worker.key)}) was removed from the allow-list"
            elif not ring.may_register(worker.key, worker.service.name):
                reason = (
                    f"its CURVE key ({ring.name(worker.key)}) may no longer register "
                    f"{worker.service.name!r} (ACL)"
                )
            else:
                continue
            log.warning("worker %s cut off: %s", worker.worker_id, reason)
            self.counters["curve_revoked_workers"] += 1
            self._purge(worker, reason, send_disconnect=True)
        for client, key in list(self._client_keys.items()):
            if not ring.allows(key):
                del self._client_keys[client]
        dropped = 0
        for req in list(self.requests.values()):
            if req.done or req.client_key is None or ring.allows(req.client_key):
                continue
            if req.worker is None:
                if req.service.queue.pop(req.ticket, None) is not None:
                    self.queued_total -= 1
            else:  # keep the worker's slot until its (dropped) reply, as for a deadline
                heapq.heappush(
                    self._releases,
                    (req.deadline + self.settings.release_grace, req.worker.identity, req.ticket),
                )
                self._wake_by(req.deadline + self.settings.release_grace)
            self._finish(req)  # no answer: the key is revoked
            dropped += 1
            self._forget_if_idle(req.service)
        if dropped:
            log.warning("dropped %d request(s) of revoked client key(s)", dropped)

    def _expire(self, req: Request, now: float) -> None:
        service = req.service
        worker = req.worker
        if worker is None:  # still waiting in the queue
            if service.queue.pop(req.ticket, None) is not None:
                self.queued_total -= 1
            waited = now - req.received_at
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
                f"worker {worker.worker_id} of {service.name!r} did not answer before the deadline",
            )
            heapq.heappush(
                self._releases, (now + self.settings.release_grace, worker.identity, req.ticket)
            )
            self._wake_by(now + self.settings.release_grace)
        self._forget_if_idle(service)

    def _compact_deadlines(self) -> None:
        requests = self.requests
        self._deadlines = [
            entry
            for entry in self._deadlines
            if (req := requests.get(entry[1])) is not None and req.deadline == entry[0]
        ]
        heapq.heapify(self._deadlines)

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        """Tell workers DISCONNECT and give every unanswered request an error."""
        if self.socket is None:
            return
        for worker in list(self.workers.values()):
            self._send(worker.identity, [W_HDR, W_DISCONNECT])
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
        self._flush()
        log.info(
            "broker shutting down: %d worker(s) disconnected, %d request(s) answered with an error",
            len(self.workers),
            answered,
        )
        self.close()


# ---------------------------------------------------------------------- helpers

#: Marker: the frame is our header but a field has the wrong type.
_BAD_HEADER: dict = {}
#: Marker: the client's CURVE key is no longer allowed; its message is dropped.
_REFUSED = object()


def _request_header(frame) -> dict | None:
    """Our request header as a dict, None for an opaque body, _BAD_HEADER when invalid."""
    data = _frame_bytes(frame)
    if not data or len(data) > MAX_HEADER_BYTES or data[0] & 0xF0 != 0x80:
        return None  # not a msgpack fixmap: an opaque RFC 18 body
    try:
        header = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return None
    if not isinstance(header, dict) or header.get("v") != VERSION or "id" not in header:
        return None
    ttl = header.get("ttl")
    attempt = header.get("attempt", 0)
    if (ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool))) or (
        not isinstance(attempt, int) or isinstance(attempt, bool)
    ):
        return _BAD_HEADER
    return header


def _frame_bytes(frame) -> bytes:
    return frame if isinstance(frame, bytes) else frame.bytes


def _utf8(data: bytes) -> bool:
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _peer_name(peer: bytes | Worker) -> str:
    return peer.worker_id if isinstance(peer, Worker) else peer.hex()


def _peer_address(frame: zmq.Frame) -> str | None:
    try:
        return frame.get("Peer-Address")
    except (zmq.ZMQError, AttributeError, UnicodeDecodeError):
        return None


def _describe(frames: list) -> str:
    """A short, safe description of a message's frames for a log line."""
    shown = [repr(f[:16] if isinstance(f, bytes) else bytes(f.buffer[:16])) for f in frames[:4]]
    more = f", +{len(frames) - 4} more" if len(frames) > 4 else ""
    return f"{len(frames)} frame(s): {', '.join(shown)}{more}"
