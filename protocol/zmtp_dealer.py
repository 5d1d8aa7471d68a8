"""The native bus transport: a ZeroMQ DEALER written on asyncio, dialling one ROUTER.

It does what the client needs of a libzmq DEALER socket with one ``connect``: keeps one
ZMTP connection (:mod:`protocol.zmtp_connection`) to ``tcp://host:port`` up, dials again
after a loss with libzmq's back-off (``reconnect_interval``, doubling up to
``reconnect_interval_max``, back to the start after a completed handshake), and carries
the routing id as ZMTP's ``Identity`` property so the broker sees the same peer after a
reconnection.

Messages sent before the first handshake wait in a queue, as they would in a libzmq
socket's pipe, until a handshake is refused (the client then fails every pending
request, so their copies are dropped too). Messages sent while a lost connection is
being dialled again are dropped: the client resends every pending request itself once
the connection is back (with the time it has left and ``attempt + 1``), and a queued copy
would only reach the broker as a duplicate.

``max_message_bytes`` bounds one message from the peer, all its frames together; one
over it drops the connection (as libzmq's ``ZMQ_MAXMSGSIZE`` does for a frame), so a
peer cannot make the client buffer without limit.

Only ``tcp://`` is spoken; ``ipc://``, ``inproc://`` and the rest are the pyzmq
transport's (``transport="zmq"``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from mole.protocol.bus_transport import TransportEvents, curve_available
from mole.protocol.curve import CurveKeys
from mole.protocol.errors import HandshakeRefused, TransportError
from mole.protocol.zmtp_connection import ZmtpConnection
from mole.protocol.zmtp_mechanism import ClientMechanism, NullMechanism

log = logging.getLogger("mole.client")


def tcp_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ``tcp://host:port`` URL.

    Raises:
        ValueError: not a ``tcp://`` URL with a host and a numeric port (the message says
            which transport takes other schemes).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "tcp":
        raise ValueError(
            f"the native transport dials tcp:// addresses only, not {url!r}; use "
            'transport="zmq" (pyzmq) for ipc://, inproc:// and other ZeroMQ transports'
        )
    host, colon, port = rest.rpartition(":")
    host = host.strip("[]")  # tcp://[::1]:5555
    if not colon or not host or not port.isdigit() or host == "*" or not 0 < int(port) < 65536:
        raise ValueError(f"{url!r} is not tcp://HOST:PORT (a port is 1 to 65535)")
    return host, int(port)


class ZmtpDealer:
    """A reconnecting DEALER connection to one broker, on one event loop."""

    name = "native"

    def __init__(
        self,
        url: str,
        routing_id: bytes,
        *,
        curve: CurveKeys | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 3.0,
        reconnect_interval: float = 0.1,
        reconnect_interval_max: float = 1.0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.url = url
        self.host, self.port = tcp_address(url)
        if curve is not None and not curve_available():
            raise ValueError(
                "the native transport's CURVE needs PyNaCl (pip install "
                "'mole-framework[curve]'); without it use transport=\"zmq\""
            )
        if curve is not None:
            from mole.protocol.zmtp_curve import check_keys  # PyNaCl: only with CURVE

            check_keys(curve)
        self.routing_id = routing_id
        self._curve = curve
        self._heartbeat = (heartbeat_interval, heartbeat_timeout)
        self._first_delay = reconnect_interval
        self._max_delay = max(reconnect_interval, reconnect_interval_max)
        self._delay = reconnect_interval
        self._max_message_bytes = max_message_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: TransportEvents | None = None
        self._connection: ZmtpConnection | None = None  # the one ready for messages
        self._dialling: ZmtpConnection | None = None  # connecting or in its handshake
        self._attempt: asyncio.Task[object] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._queue: deque[list[bytes]] | None = deque()  # None once a handshake completed
        self._closed = False
        self.dropped = 0  # messages sent while the connection was down (resent by the client)
        self.connects = 0

    # ------------------------------------------------------------------ the seam

    def open(self, loop: asyncio.AbstractEventLoop, events: TransportEvents) -> None:
        """Start dialling on ``loop``; ``events`` hears of messages and of the link."""
        self._loop = loop
        self._events = events
        self._dial()

    def send(self, frames: list[bytes]) -> None:
        connection = self._connection
        if connection is not None:
            connection.send(frames)
        elif self._queue is not None:
            self._queue.append(frames)
        else:
            self.dropped += 1

    def close(self) -> None:
        self._closed = True
        self._queue = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
            self._attempt = None
        for connection in (self._connection, self._dialling):
            if connection is not None:
                connection.close()
        self._connection = self._dialling = None

    # ------------------------------------------------------------------ dialling

    def _mechanism(self) -> ClientMechanism:
        if self._curve is not None:
            from mole.protocol.zmtp_curve import CurveClientMechanism  # PyNaCl: only here

            return CurveClientMechanism(self._curve, self.routing_id, self.url)
        return NullMechanism(self.routing_id, self.url)

    def _dial(self) -> None:
        self._retry = None
        if self._closed:
            return
        loop = self._loop
        assert loop is not None
        interval, timeout = self._heartbeat
        connection = ZmtpConnection(
            self,
            self._mechanism(),
            self.url,
            loop,
            heartbeat_interval=interval,
            heartbeat_timeout=timeout,
            max_message_bytes=self._max_message_bytes,
        )
        self._dialling = connection
        self._attempt = loop.create_task(
            loop.create_connection(lambda: connection, self.host, self.port)
        )
        self._attempt.add_done_callback(self._dialled)

    def _dialled(self, attempt: asyncio.Task[object]) -> None:
        if attempt is self._attempt:
            self._attempt = None
        if attempt.cancelled() or self._closed:
            return
        error = attempt.exception()
        if error is not None:
            self._dialling = None
            self._after_failure(
                TransportError(f"cannot connect to the broker at {self.url}: {error}")
            )

    def _after_failure(self, reason: BaseException | None) -> None:
        """Dial again after the back-off delay; the delay doubles up to its maximum."""
        if self._closed or self._loop is None:
            return
        if reason is not None and self._events is not None:
            self._events.disconnected(str(reason))
        delay = self._delay
        self._delay = min(self._delay * 2, self._max_delay)
        self._retry = self._loop.call_later(delay, self._dial)

    # ------------------------------------------------------------------ ConnectionOwner

    def connection_ready(self, connection: ZmtpConnection) -> None:
        if self._closed or connection is not self._dialling:
            connection.close()
            return
        self._dialling = None
        self._connection = connection
        self._delay = self._first_delay
        self.connects += 1
        queued, self._queue = self._queue, None
        if queued:
            for frames in queued:
                connection.send(frames)
        assert self._events is not None
        self._events.connected()

    def message_received(self, frames: list[bytes]) -> None:
        assert self._events is not None
        try:
            self._events.frames_arrived(frames)
        except Exception:  # a sink must never break the connection that read the reply
            log.exception("error while dispatching a reply")

    def connection_ended(self, connection: ZmtpConnection, reason: BaseException | None) -> None:
        if connection is self._dialling:
            self._dialling = None
        if connection is self._connection:
            self._connection = None
        if self._closed:
            return
        if reason is not None:
            log.info("connection to the broker at %s ended: %s", self.url, reason)
        if isinstance(reason, HandshakeRefused) and self._events is not None:
            # the client fails every pending request on a refusal: their queued copies
            # must not reach the broker if a later handshake is admitted
            if self._queue is not None:
                self._queue.clear()
            self._events.refused(reason)
        self._after_failure(
            reason or TransportError(f"the broker at {self.url} closed the connection")
        )
