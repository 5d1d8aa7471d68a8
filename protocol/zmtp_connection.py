"""One ZMTP 3.1 connection on the event loop: greeting, handshake, traffic, heartbeats.

An :class:`asyncio.Protocol`, so the loop's own socket carries the frames: ``data_received``
parses what arrived (:class:`protocol.zmtp_codec.FrameDecoder`) and sends go straight to
``transport.write``. Nothing else runs beside the loop (libzmq's I/O thread and the
mailbox that wakes the loop are what this replaces).

The connection reports to its owner (:class:`protocol.zmtp_dealer.ZmtpDealer`) three
things only: it is ready for messages (handshake done), a message arrived, it ended (with
the reason). It never reconnects by itself; the owner dials again.

Heartbeats (spec 37, "Connection Heartbeating") are those of a libzmq socket with
``ZMQ_HEARTBEAT_IVL`` and ``ZMQ_HEARTBEAT_TIMEOUT``: every ``heartbeat_interval`` it
sends PING, it answers the peer's PINGs with PONG, and any traffic from the peer counts
as a sign of life; a peer silent for ``heartbeat_timeout`` is taken as lost. The
handshake must finish within ``heartbeat_timeout`` too, so a peer that accepts the TCP
connection and then says nothing cannot hold it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, cast

from mole.protocol.errors import MoleError, ProtocolMismatch, TransportError
from mole.protocol.zmtp_codec import FLAG_MORE, FrameDecoder, split_command
from mole.protocol.zmtp_greeting import (
    GREETING_SIZE,
    check_greeting_start,
    greeting,
    parse_greeting,
)
from mole.protocol.zmtp_mechanism import PAYLOAD_COMMAND, ClientMechanism, error_after_handshake

log = logging.getLogger("mole.client")

#: What a CURVE MESSAGE adds around one frame: its name, the short nonce, the box's MAC
#: and the flags octet inside the box.
_MESSAGE_OVERHEAD = 8 + 8 + 16 + 1
#: How soon a handshake deadline that fired late (the loop stalled) is judged again.
_RECHECK_S = 0.01
#: A PING's time-to-live field: zero, "no hint", as a libzmq socket sends by default.
_PING = b"\x00\x00"


class ConnectionOwner(Protocol):
    """What a connection reports to."""

    def connection_ready(self, connection: ZmtpConnection) -> None: ...

    def message_received(self, frames: list[bytes]) -> None: ...

    def connection_ended(self, connection: ZmtpConnection, reason: BaseException | None) -> None:
        """Called once, when the connection is gone (``reason`` None: a clean close)."""


class ZmtpConnection(asyncio.Protocol):
    """The client end of one ZMTP connection (DEALER, NULL or CURVE)."""

    def __init__(
        self,
        owner: ConnectionOwner,
        mechanism: ClientMechanism,
        peer: str,
        loop: asyncio.AbstractEventLoop,
        *,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        max_message_bytes: int,
    ) -> None:
        self._owner = owner
        self._mechanism = mechanism
        self._peer = peer
        self._loop = loop
        self._interval = heartbeat_interval
        self._timeout = heartbeat_timeout
        self._transport: asyncio.Transport | None = None
        self._greeting = bytearray()
        self._max_message_bytes = max_message_bytes
        # Under CURVE each frame comes boxed on its own (MESSAGE name, nonce, MAC, flags
        # octet around it): the decoder bounds a box, and _on_encrypted the message.
        boxed = _MESSAGE_OVERHEAD if mechanism.encrypted else 0
        self._decoder = FrameDecoder(
            self._early_message, self._on_command, max_message_bytes + boxed
        )
        self._parts: list[bytes] = []  # decrypted frames of an unfinished message
        self._parts_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._heard = False  # traffic since the last heartbeat tick
        self._last_heard = loop.time()
        self._reason: BaseException | None = None
        self._ended = False
        self._due = 0.0  # when the next heartbeat tick should run
        self._handshake_due = 0.0  # when the handshake must be done
        self._writing_paused = False  # the transport's buffer is over its high-water mark
        self.ready = False
        self.stage = "connecting"  # connecting, greeting, handshake, ready, closed

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast: uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = transport = cast(asyncio.Transport, transport)
        self.stage = "greeting"
        # Greeting and the mechanism's first command in one write: the peer reads its
        # 64 octets of greeting first and the command after, so nothing waits for a
        # round trip (spec 37: a peer with no older versions to detect sends it all).
        transport.write(greeting(self._mechanism.name) + self._mechanism.start())
        self._handshake_due = self._loop.time() + self._timeout
        self._timer = self._loop.call_later(self._timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        self._heard = True
        try:
            if self.stage == "greeting":
                data = self._take_greeting(data)
                if not data:
                    return
            self._decoder.feed(data)
        except MoleError as err:
            self.fail(err)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._decoder.halt()
        self._cancel_timer()
        if self._reason is None and not self.ready and self.stage != "closed":
            self._reason = self._closed_during_handshake(exc)
        if self._reason is None and exc is not None:
            self._reason = exc
        self.stage = "closed"
        self.ready = False
        self._transport = None
        if not self._ended:
            self._ended = True
            self._owner.connection_ended(self, self._reason)

    # ------------------------------------------------------------------ owner's calls

    def send(self, frames: list[bytes]) -> None:
        """Write one message (only once ready)."""
        transport = self._transport
        if transport is not None:
            transport.write(self._mechanism.seal_message(frames))

    def close(self) -> None:
        """Close without a reason (the owner is shutting down)."""
        self.stage = "closed"
        self._decoder.halt()
        self._cancel_timer()
        transport, self._transport = self._transport, None  # nothing more is written
        if transport is not None:
            transport.abort()

    def fail(self, reason: BaseException) -> None:
        """Drop the connection for ``reason``; the owner hears of it once it is gone."""
        if self._reason is None:
            self._reason = reason
        self._decoder.halt()
        self._cancel_timer()
        transport, self._transport = self._transport, None  # nothing more is written
        if transport is not None:
            transport.abort()

    # ------------------------------------------------------------------ handshake

    def _take_greeting(self, data: bytes) -> bytes:
        """Add to the peer's greeting; return what follows it once it is complete."""
        need = GREETING_SIZE - len(self._greeting)
        self._greeting += data[:need]
        check_greeting_start(self._greeting, self._peer)
        if len(self._greeting) < GREETING_SIZE:
            return b""
        self._mechanism.check_greeting(parse_greeting(self._greeting, self._peer))
        self.stage = "handshake"
        return data[need:]

    def _on_command(self, body: bytes) -> None:
        mechanism = self._mechanism
        if self.ready:
            if mechanism.encrypted:
                self._on_encrypted(body)
            else:
                self._traffic_command(body)
            return
        answer = mechanism.on_handshake_command(body)
        if answer and self._transport is not None:
            self._transport.write(answer)
        if mechanism.ready:
            self._become_ready()

    def _become_ready(self) -> None:
        self.ready = True
        self.stage = "ready"
        self._cancel_timer()
        self._last_heard = self._loop.time()
        self._heard = False
        self._due = self._last_heard + self._interval
        if not self._mechanism.encrypted:
            self._decoder.on_message = self._owner.message_received  # no hop in between
        else:
            self._decoder.on_message = self._encrypted_frames
        self._timer = self._loop.call_later(self._interval, self._heartbeat)
        self._owner.connection_ready(self)

    def _handshake_expired(self) -> None:
        self._timer = None
        now = self._loop.time()
        if now - self._handshake_due > self._timeout / 2:
            # NOTE: the loop stalled past the deadline (a long CPU step), and uvloop runs
            # due timers before it reads: the peer's answer may be waiting unread. Judge
            # once those reads are done, as the heartbeat does after a stall.
            self._handshake_due = now + _RECHECK_S
            self._timer = self._loop.call_later(_RECHECK_S, self._handshake_expired)
            return
        self.fail(
            TransportError(
                f"the peer at {self._peer} did not finish the ZMTP handshake within "
                f"{self._timeout:g} s (stage: {self.stage}); is it a ZeroMQ ROUTER socket?"
            )
        )

    def _closed_during_handshake(self, exc: BaseException | None) -> TransportError:
        """Why the peer hung up before the handshake was done, in words that say what to
        check (libzmq closes without a word on a mechanism mismatch or a bad HELLO)."""
        how = f" ({exc})" if exc is not None else ""
        mechanism = self._mechanism.name.decode()
        if self.stage == "greeting":
            # NOTE: whether the peer's first octets arrived says little: a reset can
            # discard them before they are read. So one message covers both cases.
            if mechanism == "CURVE":
                why = (
                    "either it does not use CURVE (the broker runs without --curve-secret) "
                    "or it could not open this client's HELLO: the broker public key this "
                    "client has (MOLE_CURVE_SERVER_KEY) is not the broker's"
                )
            else:
                why = (
                    "it uses CURVE, and this client has no keys (MOLE_CURVE_SERVER_KEY "
                    "and MOLE_CURVE_SECRET_KEY)"
                )
            return TransportError(
                f"the peer at {self._peer} closed the connection{how} on reading this "
                f"client's {mechanism} greeting, before finishing its own. A ZeroMQ broker "
                f"does that when it refuses the connection: {why}. Otherwise the address "
                "is not that of the broker's ROUTER socket"
            )
        stage = getattr(self._mechanism, "stage", "")
        if stage == "welcome":
            return TransportError(
                f"the broker at {self._peer} closed the connection{how} after this "
                "client's CURVE HELLO: a CURVE broker does that with a HELLO it cannot "
                "open, so the broker public key this client has is most likely not the "
                "broker's"
            )
        if stage == "ready":
            return TransportError(
                f"the broker at {self._peer} closed the connection{how} after this "
                "client's CURVE INITIATE: its authenticator does not admit this client's "
                "key (is it in the broker's --curve-allow folder?)"
            )
        return TransportError(
            f"the peer at {self._peer} closed the connection{how} during the ZMTP "
            f"{self.stage} (before the handshake was done)"
        )

    def _early_message(self, frames: list[bytes]) -> None:
        raise ProtocolMismatch(
            f"the peer at {self._peer} sent a message before the ZMTP handshake was done"
        )

    def _encrypted_frames(self, frames: list[bytes]) -> None:
        # libzmq sends each CURVE MESSAGE as a message frame, not a command frame as spec
        # 37 would have it ("message data SHALL be encoded as commands"): take both.
        for body in frames:
            self._on_encrypted(body)

    # ------------------------------------------------------------------ traffic

    def _on_encrypted(self, body: bytes) -> None:
        flags, frame = self._mechanism.open_frame(body)
        if flags & PAYLOAD_COMMAND:
            if not frame or len(frame) < 1 + frame[0] or frame[0] == 0:
                # NOTE: split_command's error quotes the body; this one travelled
                # encrypted, so it stays out of the message (and the logs)
                raise ProtocolMismatch(
                    f"malformed command inside a CURVE MESSAGE from the peer at {self._peer}"
                )
            self._traffic_command(frame)
            return
        self._parts_bytes += len(frame)
        if self._parts_bytes > self._max_message_bytes:
            raise ProtocolMismatch(
                f"CURVE message of {len(self._parts) + 1} frames and at least "
                f"{self._parts_bytes} bytes from the peer at {self._peer} is over this "
                f"connection's limit of {self._max_message_bytes} bytes"
            )
        self._parts.append(frame)
        if not flags & FLAG_MORE:
            parts, self._parts = self._parts, []
            self._parts_bytes = 0
            self._owner.message_received(parts)

    def _traffic_command(self, body: bytes) -> None:
        name, data = split_command(body)
        if name == b"PING":
            # NOTE: not while the peer leaves what we wrote unread (the transport's buffer
            # is over its high-water mark): a peer flooding PINGs would otherwise grow that
            # buffer without bound, a PONG each. What waits unread tells it we live anyway
            # (libzmq likewise keeps at most one PONG due).
            if not self._writing_paused:
                # echo the ping context (up to 16 octets after the 2-octet ttl)
                self._write(self._mechanism.seal_command(b"PONG", data[2:18]))
        elif name == b"ERROR":
            raise error_after_handshake(data, self._peer, self._mechanism.name.decode())
        # PONG: its arrival already counted as traffic. Other commands (SUBSCRIBE, ...)
        # mean nothing to a DEALER and are ignored, as ZMTP lets a peer do.

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _heartbeat(self) -> None:
        self._timer = None
        now = self._loop.time()
        stalled = now - self._due > self._interval
        self._due = now + self._interval
        if self._heard:
            self._heard = False
            self._last_heard = now
        silent = now - self._last_heard
        # NOTE: after a stall of the loop (a long CPU step) this tick may run before the
        # reads of what arrived meanwhile; it does not judge then, the next one does.
        # libzmq's I/O thread has no such blind spot; this keeps a busy loop's live
        # connection from being taken as lost.
        if silent >= self._timeout and not stalled:
            self.fail(
                TransportError(
                    f"no traffic from the broker at {self._peer} for {silent:.1f} s "
                    f"(heartbeat timeout {self._timeout:g} s): connection taken as lost"
                )
            )
            return
        self._write(self._mechanism.seal_command(b"PING", _PING))
        self._timer = self._loop.call_later(self._interval, self._heartbeat)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
