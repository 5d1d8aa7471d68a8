"""The worker's connection to the broker: register, heartbeat, reconnect, serve slots.

One thread owns the DEALER socket and never runs handler code: it registers (READY with
the metadata frame), answers heartbeats, hands each REQUEST to :meth:`Handler.submit` and
sends what handlers answer. Handlers answer from their own threads through a
:class:`~worker.handler.Responder`, which puts the frames on a queue and wakes the socket
thread over an inproc socket, so a batch that computes for a minute never delays a
heartbeat and the broker never purges a busy worker.

Robustness rules this module enforces, whatever the handler does:

- at most ``handler.slots`` requests are with the handler at once; one more is answered
  ``overloaded`` at once (a broker that follows our READY never sends it);
- a body that is not our envelope, or whose payload is not msgpack, is answered
  ``bad_request``; the worker keeps serving;
- a request whose deadline has passed is not given to the handler (``deadline_exceeded``),
  and one whose handler has not answered by its deadline is closed the same way, so its
  slot comes back;
- exactly one final per request: a second ``final``/``error`` is ignored and logged;
- the broker silent for ``liveness`` heartbeat intervals, or a DISCONNECT from it, means a
  new socket and a new READY after a back-off that doubles up to ``reconnect_max``;
  answers to requests of the previous connection are dropped (that broker re-dispatches
  them itself);
- :meth:`WorkerRuntime.stop` sends DISCONNECT before closing.

Two rules make a worker's registration mean that it can do the work:

- **Graceful drain** (:meth:`WorkerRuntime.drain`, SIGTERM): RFC 18 has no "pause", so the
  worker stops taking work by not handing new requests to its handler (it leaves them
  unanswered), keeps heartbeating and answering what the handler holds, and when that is
  done (or the drain timeout passes) sends DISCONNECT. The broker then purges it and
  re-dispatches whatever it still counted as ours, the declined requests included, to
  another worker: nothing in flight is lost and nothing is computed twice.
- **Stuck compute loop**: when the handler holds requests but has answered nothing for
  ``stuck_limit`` seconds (a hung GPU, a deadlock), the worker goes silent: no heartbeat,
  no reply, so the broker purges it within its expiry and re-dispatches its requests. It
  registers again only after the handler answers again.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket as socket_module
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from mole.protocol import mdp
from mole.protocol._frames import recv_frames, send_frames
from mole.protocol._wake import Waker
from mole.protocol.curve import CurveKeys
from mole.protocol.envelope import (
    ReplyHeader,
    decode_request_header,
    error_reply,
    pack,
    unpack,
)
from mole.protocol.errors import ErrorCode, MalformedMessage
from mole.worker.handler import Handler, Responder, WorkRequest

log = logging.getLogger("mole.worker")

DEFAULT_HEARTBEAT_INTERVAL_S = 2.5
DEFAULT_LIVENESS = 3
#: Seconds the handler may hold work without answering anything before the worker goes
#: silent (a batch of the largest model on CPU stays well under it).
DEFAULT_STUCK_LIMIT_S = 60.0
#: Seconds a draining worker waits for its handler's in-flight work before DISCONNECT.
DEFAULT_DRAIN_TIMEOUT_S = 30.0


def default_worker_id(service: str) -> str:
    """``WORKER_ID`` from the environment, else ``<host>-<pid>``."""
    return os.environ.get("WORKER_ID") or f"{socket_module.gethostname()}-{os.getpid()}"


def _opaque_error(code: ErrorCode, message: str) -> list[bytes]:
    """Error body for a request that did not use our envelope (docs/interfaces.md)."""
    return [pack({"error": code.value, "message": message})]


def _loose_request_id(frame: bytes) -> str:
    """The id of a header we could not fully parse, so the error still correlates."""
    try:
        header = unpack(frame)
        return str(header.get("id", "")) if isinstance(header, dict) else ""
    except MalformedMessage:
        return ""


class _Responder(Responder):
    """Sends one request's answers through the runtime; the first final wins."""

    __slots__ = ("_generation", "_lock", "_runtime", "deadline", "done", "request_id", "ticket")

    def __init__(
        self,
        runtime: WorkerRuntime,
        generation: int,
        ticket: bytes,
        request_id: str,
        deadline: float | None,
    ) -> None:
        self._runtime = runtime
        self._generation = generation
        self.ticket = ticket
        self.request_id = request_id
        self.deadline = deadline
        self._lock = threading.Lock()
        self.done = False

    def partial(self, payload: Any) -> None:
        self._runtime._handler_progress(self, finished=False)
        if self.done:
            log.warning("request %s: partial after its final answer ignored", self.request_id)
            return
        try:
            body = [ReplyHeader(self.request_id).encode(), pack(payload)]
        except Exception as err:  # not msgpack-serialisable: skip it, keep the request
            log.error("request %s: partial payload cannot be packed: %s", self.request_id, err)
            return
        if len(body[1]) > self._runtime.max_reply_bytes:
            log.error(
                "request %s: partial of %d bytes dropped (over the message limit)",
                self.request_id,
                len(body[1]),
            )
            return
        self._runtime._post(self._generation, self.ticket, mdp.W_PARTIAL, body, None)

    def final(self, payload: Any) -> None:
        self._runtime._handler_progress(self, finished=True)
        try:
            body = [ReplyHeader(self.request_id).encode(), pack(payload)]
        except Exception as err:
            log.error("request %s: reply payload cannot be packed: %s", self.request_id, err)
            body = error_reply(
                self.request_id,
                ErrorCode.INTERNAL,
                f"the worker produced a reply it cannot encode: {err}",
            )
        limit = self._runtime.max_reply_bytes
        if len(body[-1]) > limit:
            # NOTE: the broker would drop this worker's connection for an oversized frame.
            log.error(
                "request %s: reply of %d bytes is over the %d-byte limit",
                self.request_id,
                len(body[-1]),
                limit,
            )
            body = error_reply(
                self.request_id,
                ErrorCode.INTERNAL,
                f"the worker's reply is {len(body[-1])} bytes, over the {limit}-byte message limit",
            )
        self._close(body, "final")

    def error(self, code: ErrorCode | str, message: str, details: Any = None) -> None:
        self._runtime._handler_progress(self, finished=True)
        self._close_with_error(code, message, details)

    def _close_with_error(self, code: ErrorCode | str, message: str, details: Any = None) -> None:
        """Close with an error reply; the runtime uses it directly (not handler progress)."""
        try:
            body = error_reply(self.request_id, code, message, details)
        except Exception:  # details not serialisable
            body = error_reply(self.request_id, code, message)
        self._close(body, "error")

    def _close(self, body: list[bytes], what: str) -> bool:
        with self._lock:
            if self.done:
                log.warning("request %s: second final answer (%s) ignored", self.request_id, what)
                return False
            self.done = True
        self._runtime._post(self._generation, self.ticket, mdp.W_FINAL, body, self)
        return True


class WorkerRuntime:
    """Connects one :class:`Handler` to the broker as a worker of ``service``.

    Args:
        broker_url: the broker's address.
        service: the service to register (the base_model_key).
        handler: what computes answers; ``handler.slots`` bounds concurrency.
        worker_id: reported in READY's metadata (default ``WORKER_ID`` or host-pid).
        heartbeat_interval, liveness: must match the broker's (defaults 2.5 s and 3).
        reconnect_initial, reconnect_max: back-off between connections, in seconds.
        context: ZeroMQ context (``zmq.Context.instance()`` by default).
        curve: CURVE keys when the broker requires encryption (see protocol.curve).
        max_reply_bytes: a larger reply becomes an ``internal`` error (the broker would
            drop the connection of a peer sending a frame over its message limit).
        stuck_limit: seconds the handler may hold requests without answering any before
            the worker stops heartbeating (None: never).
        drain_timeout: default seconds :meth:`drain` waits for in-flight work.
        clock: the monotonic clock behind every timer here (heartbeats, the broker's
            liveness window, request deadlines, the stuck limit, the drain timeout);
            ``time.monotonic`` by default. The deadlines a handler sees in
            :class:`WorkRequest` are on it, so a handler that checks them uses the same one.
            Tests pass a clock they move by hand, then call :meth:`wake`, so they can check
            the heartbeat schedule exactly instead of measuring it.
        pause: how the socket thread waits between connections (the back-off) and while
            its compute loop is stuck, given the seconds; by default it waits on the stop
            event, so :meth:`stop` cuts the wait short. A test passes one that records the
            back-off and returns at once.
    """

    def __init__(
        self,
        broker_url: str,
        service: str,
        handler: Handler,
        *,
        worker_id: str | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        liveness: int = DEFAULT_LIVENESS,
        reconnect_initial: float = 0.25,
        reconnect_max: float = 8.0,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: CurveKeys | None = None,
        max_reply_bytes: int = 16 * 1024 * 1024 - 4096,
        stuck_limit: float | None = DEFAULT_STUCK_LIMIT_S,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        pause: Callable[[float], object] | None = None,
    ) -> None:
        if not service or service.startswith(mdp.MMI_PREFIX):
            raise ValueError(f"cannot serve {service!r}: empty or reserved (mmi.*) name")
        if len(service.encode("utf-8")) > mdp.MAX_SERVICE_LENGTH:
            raise ValueError(f"service name longer than {mdp.MAX_SERVICE_LENGTH} bytes")
        self.broker_url = broker_url
        self.service = service
        self.handler = handler
        self.slots = max(1, int(getattr(handler, "slots", 1) or 1))
        self.worker_id = worker_id or default_worker_id(service)
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self._context = context or zmq.Context.instance()
        self._curve = curve
        self.max_reply_bytes = max_reply_bytes
        if stuck_limit is not None and stuck_limit <= 0:
            raise ValueError(f"stuck_limit must be > 0 seconds or None (got {stuck_limit!r})")
        self.stuck_limit = stuck_limit
        self.drain_timeout = drain_timeout
        self._clock = clock
        self._stop = threading.Event()
        self._pause = pause if pause is not None else self._stop.wait
        self._draining = threading.Event()
        self._drain_deadline = float("inf")
        # Requests the handler holds and has not answered (kept across reconnections, and
        # after the runtime closed them at their deadline): what "stuck" is measured on.
        self._held: dict[_Responder, float] = {}
        self._held_lock = threading.Lock()
        self._last_progress = self._clock()
        self._waker = Waker(self._context)
        self._socket_thread: int | None = None  # the thread that owns the socket
        self._outbox: collections.deque[
            tuple[int, bytes, bytes, list[bytes], _Responder | None]
        ] = collections.deque()
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._in_flight: dict[bytes, _Responder] = {}
        self._last_sent = 0.0
        self._refused_generation = -1  # the connection a refused send was last logged for
        # Counters, read by tests and by whoever embeds the runtime.
        self.registrations = 0
        self.served = 0
        self.rejected = 0
        self.heartbeats_sent = 0
        self.declined = 0  # requests left to the broker to re-dispatch (draining or stuck)
        self.stuck_episodes = 0
        self.stuck = threading.Event()  # set while the compute loop counts as stuck
        self.connected = threading.Event()  # set while registered and hearing the broker
        self.drained = threading.Event()  # set once a drain ended with DISCONNECT

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> WorkerRuntime:
        """Run in a background thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("runtime already started")
        self._thread = threading.Thread(
            target=self.run, name=f"mole-worker-{self.service}", daemon=True
        )
        self._thread.start()
        return self

    def run(self) -> None:
        """Serve until :meth:`stop`; blocks. Calls ``handler.start()`` and ``close()``."""
        self.handler.start()
        try:
            self._connections()
        finally:
            self._waker.close()
            try:
                self.handler.close()
            except Exception:
                log.exception("handler close failed")

    def stop(self, timeout: float = 5.0) -> None:
        """Send DISCONNECT, close the socket and the handler. Safe from any thread."""
        self._stop.set()
        self._waker.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wake(self) -> None:
        """Make the socket thread look at its clock and timers now, from any thread.

        :meth:`drain`, :meth:`stop` and handler answers wake it themselves; the one other
        caller is whoever moved an injected ``clock`` (a test) and wants the runtime to act
        on the new time without waiting out the poll timeout it computed before.
        """
        self._waker.wake()

    def drain(self, timeout: float | None = None) -> None:
        """Stop taking work, finish what the handler holds, then DISCONNECT and stop.

        Returns at once (safe from any thread); :attr:`drained` is set when it is done and
        :meth:`run` returns. ``timeout`` (default ``drain_timeout``) bounds the wait for
        in-flight work; what is still unfinished then is re-dispatched by the broker.
        """
        if self._draining.is_set():
            return
        wait = self.drain_timeout if timeout is None else timeout
        self._drain_deadline = self._clock() + max(0.0, wait)
        self._draining.set()
        log.info(
            "worker %s: draining: no new work; %d request(s) in flight, up to %.0f s",
            self.worker_id,
            len(self._in_flight),
            wait,
        )
        self._waker.wake()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # ------------------------------------------------------------------ progress

    def _handler_progress(self, responder: _Responder, *, finished: bool) -> None:
        """Any thread: the handler answered something, so its compute loop is alive."""
        self._last_progress = self._clock()
        if finished:
            with self._held_lock:
                self._held.pop(responder, None)
        if self.stuck.is_set():
            self._waker.wake()

    def _hold(self, responder: _Responder, now: float) -> None:
        with self._held_lock:
            if not self._held:
                self._last_progress = now  # idle until now: measure from this request on
            self._held[responder] = now

    def _compute_stuck(self, now: float) -> bool:
        """Is the handler holding work without having answered for ``stuck_limit``?"""
        if self.stuck_limit is None:
            return False
        with self._held_lock:
            held = len(self._held)
        stuck = held > 0 and now - self._last_progress > self.stuck_limit
        if stuck and not self.stuck.is_set():
            self.stuck.set()
            self.stuck_episodes += 1
            log.error(
                "worker %s: compute loop stuck: %d request(s) held and no answer for %.1f s "
                "(limit %.1f s); heartbeats stopped so the broker purges this worker and "
                "re-dispatches its requests",
                self.worker_id,
                held,
                now - self._last_progress,
                self.stuck_limit,
            )
        elif not stuck and self.stuck.is_set():
            self.stuck.clear()
            log.warning("worker %s: compute loop answers again; registering anew", self.worker_id)
        return stuck

    def metadata(self) -> dict[str, Any]:
        """READY's metadata frame: ours, then what the handler adds."""
        meta: dict[str, Any] = {
            "worker_id": self.worker_id,
            "service": self.service,
            "slots": self.slots,
            "pid": os.getpid(),
            "host": socket_module.gethostname(),
        }
        meta.update(self.handler.metadata() or {})
        meta["slots"] = self.slots  # what the runtime enforces is what the broker is told
        return meta

    # ------------------------------------------------------------------ socket thread

    def _connections(self) -> None:
        backoff = self.reconnect_initial
        while not self._stop.is_set():
            while self._compute_stuck(self._clock()) and not self._stop.is_set():
                if self._draining.is_set():  # nothing to hand back: the broker purged us
                    self._stop.set()
                    self.drained.set()
                    return
                self._pause(self.heartbeat_interval)  # stay unregistered until it recovers
            if self._stop.is_set():
                return
            heard = self._one_connection()
            if self._stop.is_set() or self._draining.is_set():
                return
            backoff = self.reconnect_initial if heard else min(backoff * 2, self.reconnect_max)
            log.info(
                "worker %s: reconnecting to %s in %.2f s", self.worker_id, self.broker_url, backoff
            )
            self._pause(backoff)

    def _one_connection(self) -> bool:
        """One socket's life; returns whether the broker said anything on it."""
        self._socket_thread = threading.get_ident()
        self._generation += 1
        self._in_flight.clear()
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        if self._curve is not None:
            self._curve.apply(sock)
        # A new handshake on this socket means ZeroMQ reconnected underneath us, perhaps to
        # a restarted broker that does not know this worker: a heartbeat sent at once gets
        # its DISCONNECT (and so our READY) now instead of a heartbeat interval later.
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        handshakes = 0
        sock.connect(self.broker_url)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._waker.socket, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        self.registrations += 1
        self._send(
            sock,
            mdp.encode_worker(
                mdp.WorkerCommand.READY, service=self.service, metadata=pack(self.metadata())
            ),
        )
        log.info(
            "worker %s: READY for %r sent to %s (%d slots)",
            self.worker_id,
            self.service,
            self.broker_url,
            self.slots,
        )
        heard = False
        silent_limit = self.heartbeat_interval * self.liveness
        last_heard = self._clock()
        next_expiry_scan = last_heard + 0.1
        try:
            while True:
                now = self._clock()
                wait = (
                    min(
                        self._last_sent + self.heartbeat_interval,
                        last_heard + silent_limit,
                        next_expiry_scan,
                    )
                    - now
                )
                events = dict(poller.poll(max(0, int(wait * 1000) + 1)))
                if self._stop.is_set():
                    self._send(sock, mdp.encode_worker(mdp.WorkerCommand.DISCONNECT))
                    log.info("worker %s: DISCONNECT sent, stopping", self.worker_id)
                    return heard
                if self._waker.socket in events:
                    self._waker.drain()
                if monitor in events:
                    handshakes += self._handshakes(monitor)
                    if handshakes > 1 and not self.stuck.is_set():
                        self._send(sock, [mdp.WORKER_HEADER, mdp.W_HEARTBEAT])
                        self.heartbeats_sent += 1
                now = self._clock()
                stuck = self._compute_stuck(now)
                if not stuck:
                    self._flush(sock)
                if self._draining.is_set() and self._drain_done(sock, now):
                    return heard
                if stuck:
                    # Silent on purpose: any message would keep the broker counting us alive.
                    self._decline_incoming(sock, events)
                    if now - last_heard >= silent_limit:
                        log.warning(
                            "worker %s: purged by the broker while stuck; waiting for the "
                            "compute loop before registering again",
                            self.worker_id,
                        )
                        return heard
                    if sock in events:
                        last_heard = now
                    # Nothing is sent while stuck: push the timers that would wake us to send.
                    self._last_sent = now
                    next_expiry_scan = now + self.heartbeat_interval
                    continue
                if sock in events:
                    for _ in range(1024):
                        frames = recv_frames(sock)
                        if frames is None:
                            break
                        last_heard = self._clock()
                        if self._on_message(sock, frames) == "disconnect":
                            # Not "heard": a broker that refuses us at once (a reserved
                            # name, a key it does not accept) gets a growing back-off.
                            log.warning("worker %s: the broker sent DISCONNECT", self.worker_id)
                            return heard
                        if not heard:
                            heard = True
                            self.connected.set()
                        self._flush(sock)  # an inline answer frees its slot at once
                now = self._clock()
                if now - last_heard >= silent_limit:
                    log.warning(
                        "worker %s: broker silent for %.1f s; reconnecting",
                        self.worker_id,
                        now - last_heard,
                    )
                    return heard
                if now >= next_expiry_scan:
                    self._expire(now)
                    self._flush(sock)
                    next_expiry_scan = now + 0.1
                if now - self._last_sent >= self.heartbeat_interval:
                    self._send(sock, [mdp.WORKER_HEADER, mdp.W_HEARTBEAT])
                    self.heartbeats_sent += 1
        finally:
            self.connected.clear()
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)

    @staticmethod
    def _handshakes(monitor: zmq.Socket[bytes]) -> int:
        """Read the monitor's pending events; how many were completed handshakes."""
        from zmq.utils.monitor import recv_monitor_message

        count = 0
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                count += 1
        return count

    def _decline_incoming(self, sock: zmq.Socket[bytes], events: dict[Any, int]) -> None:
        """While stuck: read what arrives, answer nothing, hand nothing to the handler."""
        if sock not in events:
            return
        for _ in range(1024):
            frames = recv_frames(sock)
            if frames is None:
                return
            try:
                message = mdp.decode_worker(frames)
            except MalformedMessage:
                continue
            if message.command == mdp.WorkerCommand.REQUEST:
                self.declined += 1

    def _drain_done(self, sock: zmq.Socket[bytes], now: float) -> bool:
        """While draining: once nothing is in flight (or time is up), DISCONNECT and stop."""
        if self._in_flight and now < self._drain_deadline:
            return False
        if self._in_flight:
            log.warning(
                "worker %s: drain timeout with %d request(s) unfinished; the broker "
                "re-dispatches them",
                self.worker_id,
                len(self._in_flight),
            )
        self._send(sock, mdp.encode_worker(mdp.WorkerCommand.DISCONNECT))
        log.info(
            "worker %s: drained (%d request(s) left to other workers); DISCONNECT sent",
            self.worker_id,
            self.declined,
        )
        self._stop.set()
        self.drained.set()
        return True

    def _send(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        # The clock is read before the (non-blocking) send: the heartbeat schedule counts
        # from the instant the message went out, even when whoever moves an injected clock
        # does so as soon as it sees the message arrive.
        sent_at = self._clock()
        try:
            send_frames(sock, frames)
        except zmq.Again:
            # No connection can take it: the broker is unreachable or refused this worker
            # (a CURVE key it does not allow). The message is dropped -- a reply's request
            # is re-dispatched by the broker once it purges this worker -- and the liveness
            # check reconnects. Said once per connection, not once per heartbeat.
            if self._refused_generation != self._generation:
                self._refused_generation = self._generation
                log.warning(
                    "cannot send to the broker at %s (not connected, or it refused this "
                    "worker's key): messages are dropped until it answers",
                    self.broker_url,
                )
            return
        self._last_sent = sent_at

    def _flush(self, sock: zmq.Socket[bytes]) -> None:
        """Send what handlers queued; drop answers that belong to an older connection."""
        outbox = self._outbox
        while outbox:
            generation, ticket, command, body, responder = outbox.popleft()
            if generation != self._generation:
                log.debug("dropping an answer for a request of an earlier connection")
                continue
            if responder is not None:  # a final: its slot is free again
                if self._in_flight.get(ticket) is not responder:
                    continue  # already closed by the runtime (deadline)
                del self._in_flight[ticket]
                self.served += 1
            self._send(sock, [mdp.WORKER_HEADER, command, ticket, mdp.EMPTY, *body])

    def _post(
        self,
        generation: int,
        ticket: bytes,
        command: bytes,
        body: list[bytes],
        final_of: _Responder | None,
    ) -> None:
        """Any thread: queue frames for the socket thread, and wake it from another thread.

        The socket thread itself (an inline answer, a deadline it enforces) sends its
        queue before it next waits, so waking it would only cost a wake-up message and
        one more turn of its loop per answer.
        """
        self._outbox.append((generation, ticket, command, body, final_of))
        if threading.get_ident() != self._socket_thread:
            self._waker.wake()

    def _reply_now(self, sock: zmq.Socket[bytes], ticket: bytes, body: list[bytes]) -> None:
        self.rejected += 1
        self._send(sock, [mdp.WORKER_HEADER, mdp.W_FINAL, ticket, mdp.EMPTY, *body])

    def _on_message(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> str | None:
        try:
            message = mdp.decode_worker(frames)
        except MalformedMessage as err:
            log.warning(
                "worker %s: malformed message from the broker ignored: %s", self.worker_id, err
            )
            return None
        command = message.command
        if command == mdp.WorkerCommand.REQUEST:
            self._on_request(sock, message.client, message.body)
        elif command == mdp.WorkerCommand.DISCONNECT:
            return "disconnect"
        elif command != mdp.WorkerCommand.HEARTBEAT:
            log.warning(
                "worker %s: unexpected %s from the broker ignored", self.worker_id, command.name
            )
        return None

    def _on_request(self, sock: zmq.Socket[bytes], ticket: bytes, body: list[bytes]) -> None:
        if not body:
            self._reply_now(
                sock,
                ticket,
                _opaque_error(
                    ErrorCode.BAD_REQUEST, "empty request body; expected [header, payload]"
                ),
            )
            return
        try:
            header = decode_request_header(body[0])
        except MalformedMessage as err:
            rid = _loose_request_id(body[0])
            self._reply_now(
                sock, ticket, error_reply(rid, ErrorCode.BAD_REQUEST, f"bad request header: {err}")
            )
            return
        if header is None:
            self._reply_now(
                sock,
                ticket,
                _opaque_error(
                    ErrorCode.BAD_REQUEST,
                    "request body is not a MoLE envelope: send [msgpack header, msgpack payload] "
                    "(see protocol/envelope.py)",
                ),
            )
            return
        rid = header.request_id
        if len(body) != 2:
            self._reply_now(
                sock,
                ticket,
                error_reply(
                    rid,
                    ErrorCode.BAD_REQUEST,
                    f"request has {len(body) - 1} payload frames; expected exactly one",
                ),
            )
            return
        now = self._clock()
        ttl_ms = header.ttl_ms
        deadline = None if ttl_ms is None else now + ttl_ms / 1000.0
        if ttl_ms is not None and ttl_ms <= 0:
            self._reply_now(
                sock,
                ticket,
                error_reply(
                    rid,
                    ErrorCode.DEADLINE_EXCEEDED,
                    "the request's deadline had passed when it reached the worker",
                ),
            )
            return
        if ticket in self._in_flight:
            log.warning("worker %s: duplicate ticket for request %s ignored", self.worker_id, rid)
            return
        if self._draining.is_set() or self.stuck.is_set():
            # Left unanswered: our DISCONNECT (draining) or our purge (stuck) makes the
            # broker re-dispatch it to another worker, where an error reply would not.
            self.declined += 1
            return
        if len(self._in_flight) >= self.slots:
            self._reply_now(
                sock,
                ticket,
                error_reply(
                    rid,
                    ErrorCode.OVERLOADED,
                    f"worker {self.worker_id} has all {self.slots} slots busy",
                ),
            )
            return
        try:
            payload = unpack(body[1])
        except MalformedMessage as err:
            self._reply_now(sock, ticket, error_reply(rid, ErrorCode.BAD_REQUEST, str(err)))
            return
        responder = _Responder(self, self._generation, ticket, rid, deadline)
        self._in_flight[ticket] = responder
        self._hold(responder, now)
        request = WorkRequest(rid, payload, deadline, header.attempt, now)
        try:
            self.handler.submit(request, responder)
        except Exception as err:
            log.exception("worker %s: handler.submit failed for request %s", self.worker_id, rid)
            responder.error(ErrorCode.INTERNAL, f"the worker's handler failed: {err}")

    def _expire(self, now: float) -> None:
        """Close requests whose handler missed their deadline, freeing their slots."""
        for responder in [
            r for r in self._in_flight.values() if r.deadline is not None and r.deadline <= now
        ]:
            responder._close_with_error(
                ErrorCode.DEADLINE_EXCEEDED,
                f"worker {self.worker_id} did not finish before the deadline",
            )


def stop_on_signals(runtime: WorkerRuntime) -> None:
    """SIGTERM or SIGINT drains ``runtime`` (in-flight work answered, then DISCONNECT); a
    second signal stops it at once (DISCONNECT; the broker re-dispatches what is left).

    NOTE: the handler only starts a thread: ``drain()`` and ``stop()`` take locks that a
    signal handler, which may interrupt their holder, must not take.
    """

    def _stop(signum: int, frame: object) -> None:
        if runtime.draining:
            target: Any = runtime.stop
            kwargs: dict[str, Any] = {"timeout": 0}
        else:
            target, kwargs = runtime.drain, {}
        threading.Thread(target=target, kwargs=kwargs, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
