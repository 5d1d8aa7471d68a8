"""The pyzmq bus transport: a libzmq DEALER socket driven from the event loop.

libzmq's I/O thread does the TCP work (and reconnects, heartbeats and the CURVE
handshake); the loop watches the socket's descriptor with ``loop.add_reader`` and a
socket monitor reports completed handshakes and disconnections. This was the asyncio
client's only transport before :mod:`protocol.zmtp_dealer`; it stays for ``ipc://`` and
other ZeroMQ addresses, and as the reference the native one is tested against.

NOTE: a plain pyzmq socket rather than a ``zmq.asyncio`` one: sends never block here
(unbounded high-water mark), so a request costs one non-blocking send and one callback,
where ``zmq.asyncio`` adds a future per send and per receive; that measured about 1.5x the
throughput on this machine. ZeroMQ's descriptor is edge-triggered, so after the sends of
one turn of the loop a callback checks ``EVENTS`` once (and reads only if a reply is
waiting, rather than raising ``zmq.Again``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from mole.protocol._frames import pending_events, recv_frames, send_frames
from mole.protocol.bus_transport import TransportEvents
from mole.protocol.client import MONITOR_EVENTS, configure_socket
from mole.protocol.curve import CurveKeys

log = logging.getLogger("mole.client")

_RECV_BURST = 256  # replies dispatched per callback before other callbacks get a turn


class ZmqTransport:
    """One pyzmq DEALER socket connected to the broker, read from the loop."""

    name = "zmq"

    def __init__(
        self,
        url: str,
        routing_id: bytes,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | zmq.asyncio.Context | None = None,
        curve: CurveKeys | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 3.0,
        reconnect_interval: float = 0.1,
        reconnect_interval_max: float = 1.0,
    ) -> None:
        self.url = url
        self.routing_id = routing_id
        self._context = context
        self._curve = curve
        self._options = (
            heartbeat_interval,
            heartbeat_timeout,
            reconnect_interval,
            reconnect_interval_max,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: TransportEvents | None = None
        self._socket: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._check_scheduled = False

    def open(self, loop: asyncio.AbstractEventLoop, events: TransportEvents) -> None:
        socket = _sync_context(self._context).socket(zmq.DEALER)
        configure_socket(socket, self.routing_id, *self._options)
        if self._curve is not None:
            self._curve.apply(socket)
        monitor = socket.get_monitor_socket(MONITOR_EVENTS)
        try:
            socket.connect(self.url)
        except zmq.ZMQError:
            socket.disable_monitor()
            monitor.close(0)
            socket.close(0)
            raise
        self._loop, self._events = loop, events
        self._socket, self._monitor = socket, monitor
        loop.add_reader(socket.FD, self._on_readable)
        loop.add_reader(monitor.FD, self._on_monitor)
        loop.call_soon(self._on_monitor)

    def send(self, frames: list[bytes]) -> None:
        socket = self._socket
        if socket is None:
            return
        try:
            send_frames(socket, frames)
        except zmq.Again:  # cannot happen with SNDHWM=0; the request is resent or expires
            log.warning("send queue full; a request will be retried or time out")
        if not self._check_scheduled:  # a send may have consumed the descriptor's edge
            self._check_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._after_sends)

    def close(self) -> None:
        socket, monitor, loop = self._socket, self._monitor, self._loop
        self._socket = self._monitor = None
        if socket is None or monitor is None or loop is None:
            return
        loop.remove_reader(socket.FD)
        loop.remove_reader(monitor.FD)
        with contextlib.suppress(zmq.ZMQError):
            socket.disable_monitor()
        monitor.close(0)
        socket.close(0)

    # ------------------------------------------------------------------ callbacks

    def _after_sends(self) -> None:
        """Read if a reply is waiting (a send may have taken the descriptor's signal)."""
        self._check_scheduled = False
        socket = self._socket
        if socket is not None and pending_events(socket) & zmq.POLLIN:
            self._on_readable()

    def _on_readable(self) -> None:
        self._check_scheduled = False
        socket, events, loop = self._socket, self._events, self._loop
        if socket is None or events is None or loop is None:
            return
        arrived = events.frames_arrived
        for _ in range(_RECV_BURST):
            frames = recv_frames(socket)
            if frames is None:
                break
            try:
                arrived(frames)
            except Exception:  # a sink must never kill the reader
                log.exception("error while dispatching a reply")
        else:  # more may be waiting: let other callbacks run, then continue
            self._check_scheduled = True
            loop.call_soon(self._on_readable)
            return
        if pending_events(socket) & zmq.POLLIN and not self._check_scheduled:
            self._check_scheduled = True
            loop.call_soon(self._on_readable)

    def _on_monitor(self) -> None:
        monitor, events = self._monitor, self._events
        if monitor is None or events is None:
            return
        while pending_events(monitor) & zmq.POLLIN:
            event = parse_monitor_message(monitor.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                events.disconnected(None)
            elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                events.connected()


def _sync_context(
    context: zmq.Context[zmq.Socket[bytes]] | zmq.asyncio.Context | None,
) -> zmq.Context[zmq.Socket[bytes]]:
    """A plain context for the client's sockets: the one given (an asyncio one shadowed,
    as the loop drives plain sockets here), else the process-wide instance."""
    if context is None:
        return zmq.Context.instance()
    if isinstance(context, zmq.asyncio.Context):
        return zmq.Context.shadow(context.underlying)
    return context
