"""The CURVE mechanism, client side (rfc.zeromq.org specs 25 ZMTP-CURVE and 26 CurveZMQ).

Four key pairs take part: the client's and the broker's permanent ones (C, S: the client
knows S beforehand, from ``mole keys generate``) and a transient pair each makes for the
connection (C', S'), which gives forward secrecy. The handshake, client's view:

* HELLO: C' in clear, and 64 zero octets boxed from C' to S (proves nothing about the
  client, but only the holder of S's secret key can open it).
* WELCOME from the server: S' and a cookie, boxed from S to C'. A server that cannot open
  the HELLO (we used the wrong S) closes the connection instead; a WELCOME we cannot open
  did not come from S.
* INITIATE: the cookie back, then C, a *vouch* (C' and S boxed from C to S': only the
  holder of C's secret could make it) and our metadata, boxed from C' to S'.
* READY from the server: its metadata boxed from S' to C'. An authenticator that refuses
  C sends ERROR instead.

Then every frame travels as a MESSAGE command: an 8-octet nonce and a box from C' to S'
(or back) holding one flags octet (bit 0 MORE; bit 1 COMMAND, which is how libzmq carries
PING and PONG inside the encryption) and the frame. Nonces are counters; each side's must
grow, so a replayed or reordered box is refused.

Boxes are NaCl's ``crypto_box`` (Curve25519, XSalsa20, Poly1305) through PyNaCl's
documented low-level bindings; the transient keys' shared secret is computed once per
connection (``crypto_box_beforenm``), so each message costs one symmetric box.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from nacl.bindings import (
    crypto_box_beforenm,
    crypto_box_easy,
    crypto_box_easy_afternm,
    crypto_box_keypair,
    crypto_box_open_easy,
    crypto_box_open_easy_afternm,
)
from nacl.exceptions import CryptoError
from zmq.utils import z85

from mole.protocol.curve import CurveKeys
from mole.protocol.errors import HandshakeRefused, ProtocolMismatch
from mole.protocol.zmtp_codec import FLAG_MORE, command_frame, single_frame, split_command
from mole.protocol.zmtp_greeting import PeerGreeting, decode_metadata
from mole.protocol.zmtp_mechanism import (
    PAYLOAD_COMMAND,
    check_peer_properties,
    error_after_handshake,
    metadata,
    refused,
)

_HELLO = b"\x05HELLO"
_INITIATE = b"\x08INITIATE"
_MESSAGE = b"\x07MESSAGE"
_VERSION = b"\x01\x00"
_HELLO_PADDING = bytes(72)
_COOKIE_SIZE = 96
_WELCOME_DATA_SIZE = 16 + 144
_nonce = struct.Struct("!Q").pack


def _key(z85_key: bytes, what: str) -> bytes:
    """The 32 octets of a Z85-encoded key.

    Raises:
        ValueError: not 40 characters of Z85 that decode to 32 octets. The message names
            the key but shows nothing of it (the decoder's own errors quote a character,
            and a secret key's characters stay out of logs), and nothing is chained.
    """
    try:
        raw = z85.decode(z85_key)
    except (ValueError, KeyError, TypeError, struct.error):
        raw = b""  # outside the alphabet, a group past 32 bits, a length not of 5s
    if len(raw) != 32:
        raise ValueError(
            f"{what} is not a CURVE key: a key is 40 characters of the Z85 alphabet, as "
            "`mole keys generate` writes them"
        )
    return bytes(raw)


def check_keys(keys: CurveKeys) -> None:
    """Refuse keys that are not CURVE keys when a transport is made, not at its first
    dial (raises ``ValueError`` naming which key)."""
    _key(keys.server_public, "the broker's public key")
    _key(keys.public, "the client's public key")
    _key(keys.secret, "the client's secret key")


class CurveClientMechanism:
    """One connection's CURVE handshake and encryption, as the client."""

    name = b"CURVE"
    encrypted = True

    def __init__(self, keys: CurveKeys, routing_id: bytes, peer: str) -> None:
        self._server = _key(keys.server_public, "the broker's public key")
        self._public = _key(keys.public, "the client's public key")
        self._secret = _key(keys.secret, "the client's secret key")
        self._routing_id = routing_id
        self._peer = peer
        self._transient_public, self._transient_secret = crypto_box_keypair()
        self._sent = 0  # our short nonce: one counter over HELLO, INITIATE and MESSAGEs
        self._received = 0  # the server's last short nonce (READY, MESSAGEs)
        self._session: bytes | None = None  # shared key of C' and S'
        self._stage = "welcome"
        self.ready = False
        self.peer_properties: dict[str, bytes] = {}

    @property
    def stage(self) -> str:
        """What the handshake waits for: ``welcome``, ``ready`` or ``done``."""
        return self._stage

    def check_greeting(self, greeting: PeerGreeting) -> None:
        if greeting.mechanism != self.name:
            raise ProtocolMismatch(
                f"the broker at {self._peer} offers the {greeting.mechanism.decode()} "
                "mechanism, not CURVE: it runs without --curve-secret, so drop this "
                "client's CURVE keys, or point it at the CURVE broker"
            )
        # NOTE: the as-server octet is not checked: libzmq 4.3.5's CURVE server sends 0
        # there (seen on the wire in tests), and the handshake itself shows who serves.

    def _next_nonce(self) -> bytes:
        self._sent += 1
        return _nonce(self._sent)

    def start(self) -> bytes:
        short = self._next_nonce()
        signature = crypto_box_easy(
            bytes(64), b"CurveZMQHELLO---" + short, self._server, self._transient_secret
        )
        return command_frame(
            _HELLO + _VERSION + _HELLO_PADDING + self._transient_public + short + signature
        )

    def on_handshake_command(self, body: bytes) -> bytes:
        name, data = split_command(body)
        if name == b"ERROR":
            raise refused(data, self._peer, "CURVE")
        if self._stage == "welcome" and name == b"WELCOME":
            return self._on_welcome(data)
        if self._stage == "ready" and name == b"READY":
            self._on_ready(data)
            return b""
        raise ProtocolMismatch(
            f"the peer at {self._peer} sent {name!r} during the CURVE handshake; "
            f"{self._stage.upper()} or ERROR was due"
        )

    def _on_welcome(self, data: bytes) -> bytes:
        if len(data) != _WELCOME_DATA_SIZE:
            raise ProtocolMismatch(f"malformed CURVE WELCOME from the peer at {self._peer}")
        try:
            opened = crypto_box_open_easy(
                data[16:], b"WELCOME-" + data[:16], self._server, self._transient_secret
            )
        except CryptoError:
            raise HandshakeRefused(
                f"the CURVE WELCOME from {self._peer} does not open with the broker's "
                "public key this client was given: the peer is not that broker"
            ) from None
        server_transient, cookie = opened[:32], opened[32:]
        if len(cookie) != _COOKIE_SIZE:
            raise ProtocolMismatch(f"malformed CURVE cookie from the peer at {self._peer}")
        session = crypto_box_beforenm(server_transient, self._transient_secret)
        long_nonce = os.urandom(16)
        vouch = long_nonce + crypto_box_easy(
            self._transient_public + self._server,
            b"VOUCH---" + long_nonce,
            server_transient,
            self._secret,
        )
        short = self._next_nonce()
        box = crypto_box_easy_afternm(
            self._public + vouch + metadata(self._routing_id),
            b"CurveZMQINITIATE" + short,
            session,
        )
        self._session = session
        self._stage = "ready"
        return command_frame(_INITIATE + cookie + short + box)

    def _on_ready(self, data: bytes) -> None:
        properties = decode_metadata(self._open(data, b"CurveZMQREADY---", "READY"), self._peer)
        check_peer_properties(properties, self._peer)
        self.peer_properties = properties
        self._stage = "done"
        self.ready = True

    def _open(self, data: bytes, prefix: bytes, what: str) -> bytes:
        """Open a box that follows an 8-octet short nonce, which must grow."""
        if len(data) < 8 + 16 or self._session is None:
            raise ProtocolMismatch(f"malformed CURVE {what} from the peer at {self._peer}")
        short = data[:8]
        counter = int.from_bytes(short, "big")
        if counter <= self._received:
            raise ProtocolMismatch(
                f"CURVE {what} from the peer at {self._peer} reuses nonce {counter} "
                f"(last {self._received}): a replay"
            )
        try:
            opened = crypto_box_open_easy_afternm(data[8:], prefix + short, self._session)
        except CryptoError:
            raise ProtocolMismatch(
                f"a CURVE {what} from the peer at {self._peer} does not open: tampered with "
                "or not from the broker"
            ) from None
        self._received = counter
        return opened

    # ------------------------------------------------------------------ traffic

    def _seal(self, flags: int, frame: bytes) -> bytes:
        self._sent += 1
        short = _nonce(self._sent)
        assert self._session is not None
        box = crypto_box_easy_afternm(
            bytes((flags,)) + frame, b"CurveZMQMESSAGEC" + short, self._session
        )
        # NOTE: a message frame, not a command frame: libzmq (4.3.5) sends its MESSAGEs so
        # and drops a MESSAGE that comes as a command (tested against it)
        return single_frame(_MESSAGE + short + box)

    def seal_message(self, frames: Sequence[bytes]) -> bytes:
        last = len(frames) - 1
        return b"".join(
            self._seal(FLAG_MORE if i < last else 0, frame) for i, frame in enumerate(frames)
        )

    def seal_command(self, name: bytes, data: bytes) -> bytes:
        return self._seal(PAYLOAD_COMMAND, bytes((len(name),)) + name + data)

    def open_frame(self, body: bytes) -> tuple[int, bytes]:
        if not body.startswith(_MESSAGE):
            name, data = split_command(body)
            if name == b"ERROR":
                raise error_after_handshake(data, self._peer, "CURVE")
            raise ProtocolMismatch(
                f"the peer at {self._peer} sent a {name!r} command where CURVE carries only MESSAGE"
            )
        opened = self._open(body[len(_MESSAGE) :], b"CurveZMQMESSAGES", "MESSAGE")
        if not opened:
            raise ProtocolMismatch(f"empty CURVE MESSAGE from the peer at {self._peer}")
        return opened[0], opened[1:]
