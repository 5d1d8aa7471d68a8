"""A Majordomo client per calling thread: each thread owns a socket and waits on it itself.

:class:`~protocol.client.Client` shares one socket between threads through an I/O thread,
so every request crosses threads twice (caller -> I/O thread -> caller) and wakes the I/O
thread through an inproc socket. In a threaded HTTP server each request already has a
thread of its own that does nothing but wait for the answer; letting that thread send on
its own socket and wait on it cuts the hand-offs. Measured in a gunicorn frontend process
here, a request's round trip cost about 280 us of CPU through the shared client and about
half that on a socket of the thread's own (see ``tests/benchmarks/bench_client.py``).

* :class:`SerialClient` is one socket for one thread, one request at a time. It keeps
  everything the shared client promises on a broker loss: a stable routing id, libzmq
  heartbeats, a socket monitor, and a resend of the waiting request (remaining ttl,
  ``attempt + 1``) after a reconnection, through the same :class:`Correlator`.
* :class:`PerThreadClient` is the thread-safe face: it has :class:`Client`'s blocking API
  and gives each calling thread its own :class:`SerialClient`, made on first use.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import zmq

from mole.protocol import mdp
from mole.protocol._frames import wait_frames
from mole.protocol._pending import (
    DEFAULT_DEADLINE_GRACE_S,
    DEFAULT_MAX_REQUEST_BYTES,
    ClientClosed,
    Correlator,
    check_timeout,
    decode_payload,
    decode_reply,
    new_routing_id,
)
from mole.protocol._pending import (
    RawReply as RawReply,  # re-exported: what request() returns for a plain worker
)
from mole.protocol.client import MONITOR_EVENTS, apply_monitor_events, configure_socket, send_nowait
from mole.protocol.curve import CurveKeys
from mole.protocol.envelope import pack

#: Seconds a waiting call sleeps on the socket before it looks at the socket monitor (a
#: lost or re-made connection); it also looks when a call starts after a longer pause.
MONITOR_CHECK_S = 0.1


class _Answer:
    """Sink of the one request a :class:`SerialClient` waits for (same thread: no lock)."""

    __slots__ = ("body", "done", "error")

    def __init__(self) -> None:
        self.done = False
        self.body: list[bytes] | None = None
        self.error: BaseException | None = None

    def on_partial(self, body: list[bytes]) -> None:
        pass  # request() returns the final answer only

    def on_final(self, body: list[bytes]) -> None:
        self.body = body
        self.done = True

    def on_error(self, error: BaseException) -> None:
        self.error = error
        self.done = True


class SerialClient:
    """A blocking Majordomo client for one thread. Not thread-safe: one per thread.

    Takes the same arguments as :class:`protocol.client.Client`. The socket is created
    and connected in the constructor, in the calling thread, which then owns it.
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
        self._core = Correlator(
            url, deadline_grace=deadline_grace, max_body_bytes=max_request_bytes
        )
        context = context or zmq.Context.instance()
        socket: zmq.Socket[bytes] = context.socket(zmq.DEALER)
        try:
            configure_socket(
                socket,
                self.routing_id,
                heartbeat_interval,
                heartbeat_timeout,
                reconnect_interval,
                reconnect_interval_max,
            )
            if curve is not None:
                curve.apply(socket)
            self._monitor = socket.get_monitor_socket(MONITOR_EVENTS)
            socket.connect(url)
        except BaseException:
            socket.close(0)
            raise
        self._socket = socket
        self._wait_ms = -1  # the socket's RCVTIMEO, set before each wait that changes it
        self._monitor_seen = time.monotonic()
        self._closed = False

    # ------------------------------------------------------------------ public API

    def request(self, service: str, payload: Any, timeout: float | None = None) -> Any:
        """Send ``payload`` to ``service`` and return the decoded reply payload.

        Raises:
            RequestError: the subclass for the error code of the answer
                (``DeadlineExceeded`` also when the client's own deadline passes).
            ClientClosed: the client is closed.
        """
        return decode_reply(service, self._call(service, [pack(payload)], timeout))

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
        return self._core.link.connected

    def stats(self) -> dict[str, Any]:
        return self._core.stats()

    def close(self) -> None:
        """Close the socket. Call it from the owning thread, or once that thread is idle."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(zmq.ZMQError):
            self._socket.disable_monitor()
        self._monitor.close(0)
        self._socket.close(0)

    # ------------------------------------------------------------------ the wait

    def _call(self, service: str, body: list[bytes], timeout: float | None) -> list[bytes]:
        """Send one request and wait for its final answer's body frames (raises its error)."""
        if self._closed:
            raise ClientClosed("the client is closed")
        timeout = check_timeout(timeout, self.timeout)
        core = self._core
        if not core.link.connected or time.monotonic() - self._monitor_seen >= MONITOR_CHECK_S:
            self._on_monitor()  # the link's state is current before a request goes out
        answer = _Answer()
        pending = core.open(service, body, timeout, answer)
        socket = self._socket
        send_nowait(socket, core.frames(pending))
        try:
            while not answer.done:
                remaining = pending.expires - time.monotonic()
                if remaining <= 0:
                    if core.take(pending.request_id) is not None:
                        raise core.deadline_error(pending)
                    break
                # One blocking receive, in slices, rather than zmq_poll on the socket and
                # its monitor: a third of the system calls per answer. Between slices the
                # monitor is read, so a reconnection still resends within MONITOR_CHECK_S.
                wait_ms = int(min(remaining, MONITOR_CHECK_S) * 1000) + 1
                if wait_ms != self._wait_ms:
                    socket.setsockopt(zmq.RCVTIMEO, wait_ms)
                    self._wait_ms = wait_ms
                frames = wait_frames(socket)
                if frames is None:
                    self._on_monitor()
                else:
                    core.dispatch(frames)  # a late answer to an earlier call is dropped there
        except BaseException:
            core.take(pending.request_id)  # e.g. KeyboardInterrupt: never leave it pending
            raise
        if not core.link.connected:
            self._on_monitor()  # answered, so connected: the handshake event is waiting
        if answer.error is not None:
            raise answer.error
        return answer.body if answer.body is not None else []

    def _on_monitor(self) -> None:
        socket = self._socket
        self._monitor_seen = time.monotonic()
        apply_monitor_events(
            self._monitor, self._core, self.url, lambda frames: send_nowait(socket, frames)
        )


class PerThreadClient:
    """Thread-safe blocking client with :class:`~protocol.client.Client`'s API.

    Each thread that calls it gets a :class:`SerialClient` of its own (its own socket and
    routing id), made on first use with the options given here. Meant for a fixed pool
    of threads (a threaded HTTP server); a thread that ends leaves its socket open until
    :meth:`close`.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.timeout = check_timeout(options.get("timeout"), 30.0)
        self._options = options
        self._local = threading.local()
        self._clients: list[SerialClient] = []
        self._lock = threading.Lock()
        self._closed = False
        SerialClient(url, **options).close()  # a bad URL or option fails here, not later

    def _client(self) -> SerialClient:
        client = getattr(self._local, "client", None)
        if client is None:
            with self._lock:
                if self._closed:
                    raise ClientClosed("the client is closed")
                client = SerialClient(self.url, **self._options)
                self._clients.append(client)
            self._local.client = client
        return client

    def request(self, service: str, payload: Any, timeout: float | None = None) -> Any:
        """See :meth:`protocol.client.Client.request`."""
        return self._client().request(service, payload, timeout)

    def service_available(self, name: str, timeout: float | None = None) -> bool:
        return self._client().service_available(name, timeout)

    def status(self, timeout: float | None = None) -> dict[str, Any]:
        return self._client().status(timeout)

    @property
    def connected(self) -> bool:
        """True while any of the threads' sockets is connected to the broker."""
        return any(c.connected for c in list(self._clients))

    def stats(self) -> dict[str, Any]:
        """The threads' counters summed (``connected``: any socket is)."""
        clients = list(self._clients)
        stats = [c.stats() for c in clients]
        return {
            "pending": sum(s["pending"] for s in stats),
            "resent": sum(s["resent"] for s in stats),
            "dropped_replies": sum(s["dropped_replies"] for s in stats),
            "connected": any(s["connected"] for s in stats),
            "connects": sum(s["connects"] for s in stats),
            "sockets": len(clients),
        }

    def close(self) -> None:
        """Close every thread's socket; call it once no request is in flight."""
        with self._lock:
            self._closed = True
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def __enter__(self) -> PerThreadClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
