"""The broker's socket loop: a thin shell around :class:`broker.engine.BrokerEngine`.

It owns the one ROUTER socket (clients and workers share it), CURVE's authenticator, and
the clock. Per wake-up it receives what is waiting, parses each message with
:func:`mole.protocol.mdp.read_inbound`, which calls the engine's method for it with the
time, and sends the messages the engine queued (a batch at a time); it runs the engine's
timers when they are due. All decisions are the engine's.

Hot-path habits taken from the field notes: the loop waits in a blocking ``recv`` bounded
by ``RCVTIMEO`` (with one socket ``zmq.Poller`` only adds work), drains with ``NOBLOCK``
until ``zmq.Again``, keeps payload frames as ``zmq.Frame`` objects (forwarded without a
copy), sends frame by frame with ``SNDMORE``, and sends what a run of messages produced in
one burst, which spares most of libzmq's wake-ups of its I/O thread.

Stopping: :meth:`Broker.stop` (SIGTERM, SIGINT) starts a drain -- no new requests, the
ones queued or in flight are still served -- for at most ``settings.drain_timeout``
seconds; then workers get DISCONNECT, whatever is left gets an error reply, and the
socket closes.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from mole.broker.admission import Admission, KeyAdmission, OpenAdmission
from mole.broker.curve import enable_curve, peer_key
from mole.broker.engine import BrokerEngine, describe_frames
from mole.broker.metrics import StatusSnapshot
from mole.broker.settings import BrokerSettings
from mole.protocol import mdp

log = logging.getLogger("mole.broker")

# Plain ints: pyzmq's flags are enum members, and building one per call shows in profiles.
SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)
FIRST = SNDMORE | NOBLOCK

#: Messages handled per wake-up before timers get a turn (keeps deadlines and heartbeats
#: on time under a flood).
DRAIN_BATCH = 1000
#: Queued outgoing messages that make the loop send them before it reads the next one.
SEND_BATCH = 32
#: Longest sleep of the loop: how soon a stop request (SIGTERM) is noticed when idle.
MAX_POLL_S = 0.2
#: libzmq cuts a connection that sends one frame over ZMQ_MAXMSGSIZE before the broker
#: sees it, so its client would wait in silence. The socket's cap is this many times the
#: broker's own limit: a message up to that size still reaches the broker and is answered
#: with an error naming the limit; only frames beyond it (memory the broker will not
#: spend) cost the sender its connection.
ANSWERED_OVERSIZE_FACTOR = 4
#: How late (ms) the loop's wait may end for a timer before the wait is re-armed.
TIMER_SLACK_MS = 2
#: Frames turned into ``bytes`` for the decoder (delimiter, header, command, service or
#: address, empty frame, our header); later frames stay ``zmq.Frame`` objects.
COPIED_FRAMES = 6
#: Under CURVE (ROUTER_HANDOVER off): libzmq PING interval and timeout of the broker's
#: connections. The timeout must stay below a client's own heartbeat timeout
#: (protocol.client: 3 s), so the broker has dropped a dead connection before the client
#: reconnects under the same routing id (a connection under a routing id still in use is
#: refused for good).
ZMTP_PING_INTERVAL = 0.5
ZMTP_PING_TIMEOUT = 1.5


class Broker:
    """The broker process's loop: bind it, then :meth:`run` it until :meth:`stop`.

    Args:
        settings: tuning, see :class:`broker.settings.BrokerSettings`.
        context: the ZeroMQ context (a new one by default).
        clock: monotonic seconds.
        status_snapshot: where the loop publishes its status for the metrics endpoint
            (``--metrics-port``), about once a second; None publishes nothing.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        context: zmq.Context[Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        status_snapshot: StatusSnapshot | None = None,
    ) -> None:
        self.settings = settings.validated()
        self._ctx = context or zmq.Context()
        self._own_ctx = context is None
        self._clock = clock
        self.socket: zmq.Socket[Any] | None = None
        self.endpoint: str | None = None
        self.engine = BrokerEngine(self.settings, clock())
        self._authenticator: Any = None
        self._stop_requested = False
        self._snapshot = status_snapshot
        #: the first frame of the message being handled: it carries the connection's
        #: properties (CURVE key, peer address)
        self._first: Any = None

    # ------------------------------------------------------------------ socket

    def bind(self) -> str:
        """Create the ROUTER socket and bind it; return the bound endpoint."""
        s = self.settings
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unreachable peer -> EHOSTUNREACH, not loss
        if s.curve_secret:
            # Under CURVE, handover would let another allowed key take a connected peer's
            # routing id over and receive its replies. Without it a second connection with
            # a routing id in use is refused for good, so the broker drops dead
            # connections (libzmq heartbeats) before their peers reconnect.
            sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
            sock.setsockopt(zmq.HEARTBEAT_IVL, int(ZMTP_PING_INTERVAL * 1000))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(ZMTP_PING_TIMEOUT * 1000))
        else:
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting peer keeps its routing id
        sock.setsockopt(zmq.MAXMSGSIZE, s.max_message_bytes * ANSWERED_OVERSIZE_FACTOR)
        sock.setsockopt(zmq.SNDHWM, s.hwm)
        sock.setsockopt(zmq.RCVHWM, s.hwm)
        sock.setsockopt(zmq.LINGER, 1000)
        admission: Admission = OpenAdmission()
        try:
            if s.curve_secret:
                self._authenticator, keyring = enable_curve(sock, s, self._ctx)
                if keyring is not None:
                    admission = KeyAdmission(keyring, s.heartbeat_interval, self._clock())
            sock.bind(s.bind)
        except Exception:
            sock.close(0)
            self._stop_authenticator()
            raise
        self.socket = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        engine = self.engine
        engine.attach(admission, self.endpoint, self._current_peer_address)
        # the backend's methods directly: pyzmq's Python wrappers cost ~0.2 us per frame
        base = getattr(zmq.backend, "Socket", None)
        if base is not None and isinstance(sock, base):
            self._recv = base.recv.__get__(sock)
            self._sendf = base.send.__get__(sock)
        else:
            self._recv, self._sendf = sock.recv, sock.send
        log.info(
            "broker %s listening on %s (heartbeat %.2fs x %d, queue limit %d)",
            engine.broker_id,
            self.endpoint,
            s.heartbeat_interval,
            s.liveness,
            s.queue_limit,
        )
        return self.endpoint

    def _current_peer_address(self, identity: bytes) -> str | None:
        """The network address of the peer whose message is being handled (the engine
        asks when a worker registers)."""
        return _peer_address(self._first) if self._first is not None else None

    def stop(self) -> None:
        """Ask the loop to drain and shut down (safe from a signal handler)."""
        self._stop_requested = True

    def status(self) -> dict[str, Any]:
        return self.engine.status(self._clock())

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

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        """Serve until :meth:`stop` and the drain that follows; then shut down and close."""
        if self.socket is None:
            self.bind()
        assert self.socket is not None
        clock = self._clock
        engine = self.engine
        recv = self._recv
        set_timeout = self.socket.setsockopt
        armed = -1  # the RCVTIMEO the socket has now
        wake_at = 0.0
        drain_until = float("inf")
        try:
            while True:
                now = clock()
                if self._stop_requested and not engine.draining:
                    engine.begin_drain(now)
                    drain_until = now + self.settings.drain_timeout
                if engine.draining and (engine.drained() or now >= drain_until):
                    break
                if now >= wake_at:
                    engine.on_tick(now)
                    if self._snapshot is not None and self._snapshot.due():
                        self._snapshot.publish(engine.status(now))
                    self._flush()
                    engine.take_wake_hint()  # next_timer sees every timer set so far
                    wake_at = engine.next_timer(now, MAX_POLL_S)
                timeout = int((wake_at - now) * 1000) + 1
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
                hint = engine.take_wake_hint()  # a message may have set an earlier timer
                if hint < wake_at:
                    wake_at = hint
        finally:
            self._shutdown()

    def _drain(self, identity: bytes | None) -> None:
        """Handle up to DRAIN_BATCH messages, receiving until the socket is empty.

        ``identity`` is the routing id of a message the loop's wait already received.
        Every later frame is received as a ``zmq.Frame`` (its ``more`` flag is cheaper than
        the RCVMORE option); the first COPIED_FRAMES become ``bytes`` for the decoder. The
        first frame stays a Frame as ``first``: it carries the connection's properties
        (CURVE key, peer address).
        """
        recv = self._recv
        engine = self.engine
        clock = self._clock
        read = mdp.read_inbound
        limit = self.settings.max_message_bytes
        checks_keys = engine.admission.checks_keys
        for _ in range(DRAIN_BATCH):
            if identity is None:
                try:
                    identity = recv(NOBLOCK)
                except zmq.Again:
                    break
            self._first = first = frame = recv(0, False)
            frames: list[Any] = [frame]
            size = len(frame)
            while frame.more:
                frame = recv(0, False)
                size += len(frame)
                frames.append(frame)
            for i in range(min(len(frames), COPIED_FRAMES)):
                frames[i] = frames[i].bytes
            now = clock()
            try:
                if size > limit:
                    engine.on_oversized(identity, frames[:COPIED_FRAMES], size, now)
                else:
                    key = peer_key(first) if checks_keys else None
                    try:  # the engine's method for this message, called by the parser
                        read(frames, engine, identity, now, key)
                    except mdp.UnreadableMessage as err:
                        engine.on_unreadable(identity, err, describe_frames(frames), now)
            except Exception:  # a bug must not take the broker down; count and go on
                engine.counters["internal_errors"] += 1
                log.exception("internal error handling a message from %s", identity.hex())
            identity = None
            if len(engine.outgoing) >= SEND_BATCH:
                self._flush()
        self._flush()

    # ------------------------------------------------------------------ sending

    def _flush(self) -> None:
        """Send the messages the engine queued, in order.

        A peer that is gone (EHOSTUNREACH) or whose queue is full (EAGAIN) loses the
        message, counted; when that message was a request for a worker, the engine takes
        it back (it goes to the front of its queue) and purges the worker.
        """
        send = self._sendf
        engine = self.engine
        while engine.outgoing:  # a failed dispatch may queue more (on_unreachable)
            for identity, frames, req in engine.take_outgoing():
                try:
                    try:
                        send(identity, FIRST)
                    except zmq.ZMQError as err:
                        if err.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                            raise
                        engine.counters["dropped_sends"] += 1
                        if req is not None:
                            engine.on_unreachable(identity, req, self._clock())
                        continue
                    last = len(frames) - 1
                    for i in range(last):
                        send(frames[i], SNDMORE)  # Frames go out without a copy
                    send(frames[last], 0)
                except Exception:  # as for a message: count, log, and send the rest
                    engine.counters["internal_errors"] += 1
                    log.exception("internal error sending to %s", identity.hex())

    def _shutdown(self) -> None:
        """Tell workers DISCONNECT, answer what is left with an error, close the socket."""
        if self.socket is None:
            return
        self.engine.shutdown(self._clock())
        self._flush()
        self.close()


def _peer_address(frame: Any) -> str | None:
    try:
        address: str | None = frame.get("Peer-Address")
        return address
    except (zmq.ZMQError, AttributeError, UnicodeDecodeError):
        return None
