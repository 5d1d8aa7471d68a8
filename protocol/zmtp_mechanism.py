"""ZMTP security mechanisms, client side: what a connection sends and expects after the
greeting, and how it wraps traffic. The NULL mechanism is here; CURVE is in
:mod:`protocol.zmtp_curve`.

A mechanism is a small state machine the connection drives: :meth:`start` gives the bytes
to write after the greeting, :meth:`on_handshake_command` takes each command the peer
sends until :attr:`ready`, and from then :meth:`seal_message` / :meth:`seal_command`
wrap what the connection writes. NULL wraps nothing (plain frames); CURVE encrypts every
frame into a MESSAGE command, which the connection hands to :meth:`open_frame`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mole.protocol.errors import HandshakeRefused, ProtocolMismatch
from mole.protocol.zmtp_codec import encode_command, encode_message, split_command
from mole.protocol.zmtp_greeting import PeerGreeting, decode_metadata, encode_metadata

#: Our socket type, and the peer types a DEALER may talk to (spec 37, "Socket-Type").
SOCKET_TYPE = b"DEALER"
PEER_TYPES = frozenset({b"ROUTER", b"DEALER", b"REP"})
#: Bit 1 of an encrypted frame's flags octet: the frame is a command. Spec 26 reserves
#: bits 1-7; libzmq carries PING and PONG inside CURVE's encryption with this bit.
PAYLOAD_COMMAND = 0x02


class ClientMechanism(Protocol):
    """One connection's security mechanism, client role."""

    name: bytes
    #: True once the handshake is complete (messages may flow).
    ready: bool
    #: Whether traffic arrives as commands to :meth:`open_frame` (CURVE) or plain frames.
    encrypted: bool
    #: The peer's metadata (names lower-cased), known once ready.
    peer_properties: dict[str, bytes]

    def check_greeting(self, greeting: PeerGreeting) -> None:
        """Refuse a peer whose greeting does not fit (raises ``ProtocolMismatch``)."""

    def start(self) -> bytes:
        """The bytes to write right after the greeting."""

    def on_handshake_command(self, body: bytes) -> bytes:
        """Take one handshake command; return what to write in answer (may be empty)."""

    def seal_message(self, frames: Sequence[bytes]) -> bytes:
        """One message as the bytes to write."""

    def seal_command(self, name: bytes, data: bytes) -> bytes:
        """One command (PING, PONG) as the bytes to write."""

    def open_frame(self, body: bytes) -> tuple[int, bytes]:
        """``(flags, frame)`` of an encrypted frame; only when :attr:`encrypted`."""


def metadata(routing_id: bytes) -> bytes:
    """Our properties: a DEALER with its routing id as ZMTP's ``Identity``."""
    return encode_metadata({"Socket-Type": SOCKET_TYPE, "Identity": routing_id})


def check_peer_properties(properties: dict[str, bytes], peer: str) -> None:
    """Refuse a peer whose socket type a DEALER cannot talk to."""
    kind = properties.get("socket-type")
    if kind not in PEER_TYPES:
        raise ProtocolMismatch(
            f"the peer at {peer} is a {kind!r} socket; a DEALER talks to ROUTER, DEALER "
            "or REP (the broker's socket is a ROUTER)"
        )


def error_reason(data: bytes) -> str:
    """The reason an ERROR command carries (a length octet, then the text), safe to log.

    Spec 37 allows printable ASCII only; the peer is not trusted to keep to it, so any
    other octet (a newline that would forge a log line, a terminal escape) is shown as
    ``\\xNN``.
    """
    raw = data[1 : 1 + data[0]] if data else b""
    return "".join(chr(c) if 0x20 <= c < 0x7F else f"\\x{c:02x}" for c in raw)


def refused(data: bytes, peer: str, mechanism: str) -> HandshakeRefused:
    """The exception for an ERROR command during the handshake (its data: the reason)."""
    reason = error_reason(data)
    return HandshakeRefused(
        f"the broker at {peer} refused the {mechanism} handshake: {reason or 'no reason given'}"
    )


def error_after_handshake(data: bytes, peer: str, mechanism: str) -> ProtocolMismatch:
    """The exception for an ERROR command once the handshake is done.

    Specs 37 and 26 have ERROR only in place of the handshake's answer; after it, ERROR
    is not a refusal of this client's credentials (and under CURVE it is plaintext that
    nobody authenticated: anyone on the path could inject it). So it drops the connection
    like any broken framing, and the client dials again and resends, rather than failing
    every pending request as refused.
    """
    reason = error_reason(data)
    return ProtocolMismatch(
        f"the peer at {peer} sent ERROR after the {mechanism} handshake "
        f"({reason or 'no reason given'}), which the protocol does not allow; dropping "
        "the connection and dialling again"
    )


class NullMechanism:
    """The NULL mechanism (spec 37): the client sends READY with its metadata, the peer
    answers READY with its own; no authentication, no encryption."""

    name = b"NULL"
    encrypted = False

    def __init__(self, routing_id: bytes, peer: str) -> None:
        self._routing_id = routing_id
        self._peer = peer
        self.ready = False
        self.peer_properties: dict[str, bytes] = {}

    def check_greeting(self, greeting: PeerGreeting) -> None:
        if greeting.mechanism != self.name:
            raise ProtocolMismatch(
                f"the broker at {self._peer} wants the {greeting.mechanism.decode()} "
                "mechanism and this client offers NULL: give the client the broker's "
                "CURVE keys (MOLE_CURVE_SERVER_KEY, MOLE_CURVE_SECRET_KEY)"
                if greeting.mechanism == b"CURVE"
                else f"the broker at {self._peer} wants the {greeting.mechanism!r} "
                "mechanism; this client offers NULL"
            )

    def start(self) -> bytes:
        return encode_command(b"READY", metadata(self._routing_id))

    def on_handshake_command(self, body: bytes) -> bytes:
        name, data = split_command(body)
        if name == b"ERROR":
            raise refused(data, self._peer, "NULL")
        if name != b"READY":
            raise ProtocolMismatch(
                f"the peer at {self._peer} sent {name!r} during the NULL handshake; "
                "READY or ERROR was due"
            )
        properties = decode_metadata(data, self._peer)
        check_peer_properties(properties, self._peer)
        self.peer_properties = properties
        self.ready = True
        return b""

    def seal_message(self, frames: Sequence[bytes]) -> bytes:
        return encode_message(frames)

    def seal_command(self, name: bytes, data: bytes) -> bytes:
        return encode_command(name, data)

    def open_frame(self, body: bytes) -> tuple[int, bytes]:
        raise ProtocolMismatch("the NULL mechanism carries no encrypted frames")
