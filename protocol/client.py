"""Blocking, thread-safe Majordomo client: many requests in flight on one DEALER socket.

ZeroMQ sockets must not be shared between threads, so one background I/O thread owns the
socket; callers (any number of threads) register a request, queue its frames and wait on
their own lock until the I/O thread hands them the answer. Replies are matched to requests
by the request id in the reply header, not by order.

Broker loss (Lazy Pirate, done on a DEALER): the socket has a stable routing id, libzmq
heartbeats (``ZMQ_HEARTBEAT_IVL``/``TIMEOUT``) notice a silent or vanished broker, libzmq
reconnects by itself, and a socket monitor reports each completed handshake. After a
reconnection every pending request whose deadline allows is resent with its remaining
time-to-live and ``attempt + 1``; a broker that still holds the first copy de-duplicates
by (routing id, request id), a restarted one serves the resend. A request that runs out
of time ends with :class:`~protocol.errors.DeadlineExceeded`, whose message says whether
the broker was reachable.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from mole.protocol import mdp
from mole.protocol._frames import recv_frames, send_frames
from mole.protocol._pending import (
    DEFAULT_DEADLINE_GRACE_S,
    DEFAULT_MAX_REQUEST_BYTES,
    ClientClosed,
    Correlator,
    Pending,
    Sink,
    StreamItem,
    StreamSink,
    check_timeout,
    decode_payload,
    decode_reply,
    new_routing_id,
)
from mole.protocol._pending import (
    RawReply as RawReply,  # re-exported: what request() returns for a plain worker
)
from mole.protocol._wake import Waker
from mole.protocol.curve import CurveKeys
from mole.protocol.envelope import pack

log = logging.getLogger("mole.client")

#: The socket-monitor events both blocking clients follow (link state, resend).
MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
_RECV_BURST = 1024  # messages read per wake-up before the outbox gets a turn


def configure_socket(
    socket: zmq.Socket[bytes],
    routing_id: bytes,
    heartbeat_interval: float,
    heartbeat_timeout: float,
    reconnect_interval: float,
    reconnect_interval_max: float,
) -> None:
    """Socket options both clients use (one place, so they cannot drift apart)."""
    socket.setsockopt(zmq.ROUTING_ID, routing_id)
    socket.setsockopt(zmq.LINGER, 0)
    # Unbounded queues: the number of pending requests is bounded by the callers, and a
    # send must never block the I/O thread (nor drop a request) while the broker is away.
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.setsockopt(zmq.RCVHWM, 0)
    socket.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(heartbeat_interval * 1000)))
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(heartbeat_timeout * 1000)))
    socket.setsockopt(zmq.RECONNECT_IVL, max(1, int(reconnect_interval * 1000)))
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, max(1, int(reconnect_interval_max * 1000)))


class _Waiter:
    """Sink of one blocking request: a lock the caller waits on until the answer is in."""

    __slots__ = ("_done", "body", "error")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self.body: list[bytes] | None = None
        self.error: BaseException | None = None

    def on_partial(self, body: list[bytes]) -> None:
        pass  # request() returns the final answer only; stream() sees partials

    def on_final(self, body: list[bytes]) -> None:
        self.body = body
        self._done.release()

    def on_error(self, error: BaseException) -> None:
        self.error = error
        self._done.release()

    def wait(self, timeout: float | None) -> bool:
        if timeout is None:
            return self._done.acquire()
        return self._done.acquire(timeout=max(0.0, timeout))


class Client:
    """A blocking Majordomo client. Thread-safe: share one per process.

    Args:
        url: the broker's address, e.g. ``tcp://127.0.0.1:5555``.
        timeout: default per-request deadline in seconds.
        context: ZeroMQ context; ``zmq.Context.instance()`` (fork-aware) by default.
        heartbeat_interval, heartbeat_timeout: libzmq connection heartbeats; a broker
            silent for ``heartbeat_timeout`` is treated as lost and reconnected to.
        reconnect_interval, reconnect_interval_max: libzmq's reconnect back-off.
        deadline_grace: extra seconds to wait for the broker's own answer at a deadline.
        routing_id: this client's identity on the broker (random by default).
        curve: CURVE keys when the broker requires encryption (see protocol.curve).
        max_request_bytes: larger payloads raise ``BadRequest`` before anything is sent
            (keep it at or under the broker's ``--max-message-bytes``).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 3.0,
        reconnect_interval: float = 0.1,
        reconnect_interval_max: float = 1.0,
        deadline_grace: float = DEFAULT_DEADLINE_GRACE_S,
        routing_id: bytes | None = None,
        curve: CurveKeys | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.url = url
        self.timeout = check_timeout(timeout, 30.0)
        self.routing_id = routing_id or new_routing_id()
        self._context: zmq.Context[zmq.Socket[bytes]] = context or zmq.Context.instance()
        self._core = Correlator(
            url, deadline_grace=deadline_grace, max_body_bytes=max_request_bytes
        )
        self._outbox: collections.deque[list[bytes]] = collections.deque()
        self._options = (
            heartbeat_interval,
            heartbeat_timeout,
            reconnect_interval,
            reconnect_interval_max,
        )
        self._curve = curve
        self._closing = False
        self._closed = False
        self._waker = Waker(self._context)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mole-client-io", daemon=True)
        self._thread.start()
        self._ready.wait()
        startup_error = self._io_thread_startup_error()
        if startup_error is not None:
            self._waker.close()
            raise startup_error

    # ------------------------------------------------------------------ public API

    def request(self, service: str, payload: Any, timeout: float | None = None) -> Any:
        """Send ``payload`` to ``service`` and return the decoded reply payload.

        Raises:
            RequestError: the subclass for the error code of the answer
                (``DeadlineExceeded`` also when the client's own deadline passes).
            ClientClosed: the client was closed meanwhile.
        """
        return decode_reply(service, self._call(service, [pack(payload)], timeout))

    def stream(self, service: str, payload: Any, timeout: float | None = None) -> Iterator[Any]:
        """Yield each PARTIAL reply payload, then the FINAL one; errors raise.

        ``timeout`` bounds the whole exchange. If the request is resent after a broker
        loss, partials of the first attempt may be followed by those of the second.
        Leaving the loop early forgets the request (its later replies are dropped).
        """
        timeout = check_timeout(timeout, self.timeout)
        stream_queue: queue.SimpleQueue[StreamItem] = queue.SimpleQueue()
        sink = StreamSink(stream_queue, stream_queue.put)
        pending = self._submit(service, [pack(payload)], timeout, sink)
        return self._iterate(pending, sink)

    def service_available(self, name: str, timeout: float | None = None) -> bool:
        """Whether a live worker of ``name`` is registered (RFC 8 ``mmi.service``)."""
        body = self._call(mdp.MMI_SERVICE, [name.encode("utf-8")], timeout)
        return decode_payload(body, raw=True) == b"200"

    def status(self, timeout: float | None = None) -> dict[str, Any]:
        """The broker's ``mmi.status`` report (services, workers, queues, counters)."""
        report: dict[str, Any] = decode_reply(
            mdp.MMI_STATUS, self._call(mdp.MMI_STATUS, [pack({})], timeout)
        )
        return report

    @property
    def connected(self) -> bool:
        """True while a connection to the broker is up (as the socket monitor says)."""
        return self._core.link.connected

    @property
    def pending(self) -> int:
        return len(self._core)

    def stats(self) -> dict[str, Any]:
        """``{pending, resent, dropped_replies, connected, connects}`` for metrics."""
        return self._core.stats()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the I/O thread; requests still pending raise :class:`ClientClosed`."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._waker.wake()
        self._thread.join(timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ callers' side

    def _submit(self, service: str, body: list[bytes], timeout: float, sink: Sink) -> Pending:
        if self._closed:
            raise ClientClosed("the client is closed")
        pending = self._core.open(service, body, timeout, sink)
        self._outbox.append(self._core.frames(pending))
        self._waker.wake()
        if self._closed_meanwhile() and self._core.take(pending.request_id) is not None:
            raise ClientClosed("the client was closed while the request was being sent")
        return pending

    # Other threads change these two fields. Reading them through a method keeps a type
    # checker from treating a value this thread saw earlier as still true.

    def _closed_meanwhile(self) -> bool:
        """Whether ``close`` or the ending I/O thread has closed the client by now."""
        return self._closed

    def _io_thread_startup_error(self) -> BaseException | None:
        """What stopped the I/O thread from making its socket, once ``_ready`` is set."""
        return self._startup_error

    def _call(self, service: str, body: list[bytes], timeout: float | None) -> list[bytes]:
        """Send one request and wait for its final answer's body frames (raises its error)."""
        timeout = check_timeout(timeout, self.timeout)
        waiter = _Waiter()
        pending = self._submit(service, body, timeout, waiter)
        if not waiter.wait(pending.expires - time.monotonic()):
            if self._core.take(pending.request_id) is not None:
                raise self._core.deadline_error(pending)
            waiter.wait(None)  # the answer is being handed over right now
        if waiter.error is not None:
            raise waiter.error
        return waiter.body if waiter.body is not None else []

    def _iterate(
        self, pending: Pending, sink: StreamSink[queue.SimpleQueue[StreamItem]]
    ) -> Iterator[Any]:
        finished = False
        try:
            while True:
                try:
                    kind, value = sink.queue.get(
                        timeout=max(0.0, pending.expires - time.monotonic())
                    )
                except queue.Empty:
                    if self._core.take(pending.request_id) is not None:
                        finished = True
                        raise self._core.deadline_error(pending) from None
                    continue  # the final answer is being handed over right now
                if kind == "error":
                    finished = True
                    raise value
                if kind == "final":
                    finished = True
                    yield decode_payload(value)
                    return
                yield decode_payload(value)
        finally:
            if not finished:
                self._core.take(pending.request_id)

    # ------------------------------------------------------------------ I/O thread

    def _run(self) -> None:
        try:
            socket = self._context.socket(zmq.DEALER)
            configure_socket(socket, self.routing_id, *self._options)
            if self._curve is not None:
                self._curve.apply(socket)
            monitor = socket.get_monitor_socket(MONITOR_EVENTS)
            socket.connect(self.url)
        except BaseException as err:  # bad URL, bad options: surface in the constructor
            self._startup_error = err
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._waker.socket, zmq.POLLIN)
        try:
            self._loop(socket, monitor, poller)
        except Exception:
            log.exception("client I/O thread failed; failing pending requests")
        finally:
            self._closed = True
            self._core.fail_all(
                lambda p: ClientClosed(
                    f"client closed while request {p.request_id} to {p.service!r} was pending"
                )
            )
            with contextlib.suppress(zmq.ZMQError):
                socket.disable_monitor()
            monitor.close(0)
            socket.close(0)
            self._waker.close()

    def _loop(
        self, socket: zmq.Socket[bytes], monitor: zmq.Socket[bytes], poller: zmq.Poller
    ) -> None:
        waker = self._waker.socket
        outbox = self._outbox
        dispatch = self._core.dispatch
        while True:
            events = dict(poller.poll())
            if waker in events:
                self._waker.drain()
                if self._closing:
                    return
            while outbox:
                send_nowait(socket, outbox.popleft())
            if socket in events:
                for _ in range(_RECV_BURST):
                    frames = recv_frames(socket)
                    if frames is None:
                        break
                    dispatch(frames)
            if monitor in events:
                self._on_monitor(socket, monitor)

    def _on_monitor(self, socket: zmq.Socket[bytes], monitor: zmq.Socket[bytes]) -> None:
        apply_monitor_events(monitor, self._core, self.url, lambda f: send_nowait(socket, f))


def apply_monitor_events(
    monitor: zmq.Socket[bytes], core: Correlator, url: str, resend: Callable[[list[bytes]], None]
) -> None:
    """Read the socket monitor's waiting events into ``core``'s link state.

    A completed handshake after an earlier one is a reconnection: every pending request
    whose deadline allows goes out again through ``resend`` (remaining ttl, attempt + 1).
    Both blocking clients call this from the thread that owns the socket.
    """
    while True:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return
        if event["event"] == zmq.EVENT_DISCONNECTED:
            log.info("lost the connection to the broker at %s", url)
            core.link.down()
        elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED and core.link.up():
            frames_to_resend = core.resend_frames()
            log.info(
                "reconnected to the broker at %s; resending %d pending request(s)",
                url,
                len(frames_to_resend),
            )
            for frames in frames_to_resend:
                resend(frames)


def send_nowait(socket: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """Send a multipart message without blocking; never raises."""
    try:
        send_frames(socket, frames)
    except zmq.Again:  # cannot happen with SNDHWM=0; the request is resent or expires
        log.warning("send queue full; a request will be retried or time out")
