"""The ZMTP 3 greeting and connection metadata (rfc.zeromq.org specs 23 and 37).

The greeting is the first 64 octets each peer sends: signature (``%xFF``, 8 octets of
padding, ``%x7F``), version (3.1 here), the security mechanism's name null-padded to 20
octets, the as-server octet and 31 zero octets. This client sends its whole greeting at
once (it talks only to ZMTP 3 peers, so it needs no detection of older versions) and reads
the peer's octet by octet as it arrives, so a peer that speaks something else (HTTP, TLS,
an older ZMTP) is refused at the first octet that gives it away rather than after a
timeout.

Metadata (the NULL mechanism's READY, CURVE's INITIATE and READY boxes) is a list of
properties: a name of 1-255 octets with its length in one octet, then a value with its
length in four octets, network order. Names are case-insensitive.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from mole.protocol.errors import ProtocolMismatch

GREETING_SIZE = 64
VERSION = (3, 1)
_SIGNATURE_START = 0xFF
_SIGNATURE_END = 0x7F
_MECHANISM_AT = 12
_MECHANISM_SIZE = 20
_AS_SERVER_AT = 32

_VALUE_SIZE = struct.Struct("!I")


def greeting(mechanism: bytes, *, as_server: bool = False) -> bytes:
    """This peer's 64-octet greeting for ``mechanism`` (``b"NULL"``, ``b"CURVE"``)."""
    if not 0 < len(mechanism) <= _MECHANISM_SIZE:
        raise ValueError(f"mechanism name {mechanism!r} must have 1 to 20 octets")
    return (
        bytes((_SIGNATURE_START,))
        + bytes(8)
        + bytes((_SIGNATURE_END, *VERSION))
        + mechanism.ljust(_MECHANISM_SIZE, b"\x00")
        + (b"\x01" if as_server else b"\x00")
        + bytes(31)
    )


@dataclass(frozen=True, slots=True)
class PeerGreeting:
    """What the peer's greeting announced."""

    version: tuple[int, int]
    mechanism: bytes
    as_server: bool


def check_greeting_start(received: bytes | bytearray, peer: str) -> None:
    """Refuse at once a peer whose first octets cannot start a ZMTP 3 greeting.

    ``received`` is what has arrived so far (any length up to 64).

    Raises:
        ProtocolMismatch: not ZMTP (wrong signature), or ZMTP older than 3.0.
    """
    if received and received[0] != _SIGNATURE_START:
        raise ProtocolMismatch(_not_zmtp(received, peer))
    if len(received) >= 10 and not received[9] & 0x01:
        # ZMTP 1.0 puts an identity length here; 2.0 and later the signature's 0x7F
        raise ProtocolMismatch(_not_zmtp(received, peer))
    if len(received) >= 11 and received[10] < 3:
        raise ProtocolMismatch(
            f"the peer at {peer} speaks ZMTP {received[10]}.x; this transport speaks "
            "ZMTP 3 only (libzmq 4.0 or later). Use the pyzmq transport "
            '(transport="zmq") for an older peer'
        )


def parse_greeting(data: bytes | bytearray, peer: str) -> PeerGreeting:
    """The peer's full 64-octet greeting.

    Raises:
        ProtocolMismatch: not a ZMTP 3 greeting, or a malformed mechanism name.
    """
    check_greeting_start(data, peer)
    if len(data) != GREETING_SIZE:
        raise ValueError("a greeting has 64 octets")
    raw = bytes(data[_MECHANISM_AT : _MECHANISM_AT + _MECHANISM_SIZE])
    name = raw.rstrip(b"\x00")
    if not name or b"\x00" in name or not name.isascii():
        raise ProtocolMismatch(f"the peer at {peer} sent a malformed mechanism name {raw!r}")
    return PeerGreeting((data[10], data[11]), name, data[_AS_SERVER_AT] == 1)


def _not_zmtp(received: bytes | bytearray, peer: str) -> str:
    return (
        f"the peer at {peer} does not speak ZMTP (ZeroMQ): its first bytes were "
        f"{bytes(received[:16])!r}; is the address that of the broker's ROUTER socket?"
    )


def encode_metadata(properties: Mapping[str, bytes]) -> bytes:
    """Properties as the ZMTP metadata list."""
    parts: list[bytes] = []
    for name, value in properties.items():
        raw = name.encode("ascii")
        if not 0 < len(raw) <= 255:
            raise ValueError(f"metadata name {name!r} must have 1 to 255 characters")
        parts += (bytes((len(raw),)), raw, _VALUE_SIZE.pack(len(value)), value)
    return b"".join(parts)


def decode_metadata(data: bytes, peer: str) -> dict[str, bytes]:
    """The properties of a metadata list, names lower-cased.

    Raises:
        ProtocolMismatch: a property runs past the end or has an empty name.
    """
    properties: dict[str, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        size = data[pos]
        name_end = pos + 1 + size
        if size == 0 or name_end + 4 > end:
            raise ProtocolMismatch(f"malformed ZMTP metadata from the peer at {peer}")
        name = data[pos + 1 : name_end].decode("ascii", "replace").lower()
        (value_size,) = _VALUE_SIZE.unpack_from(data, name_end)
        value_end = name_end + 4 + value_size
        if value_end > end:
            raise ProtocolMismatch(f"malformed ZMTP metadata from the peer at {peer}")
        properties[name] = data[name_end + 4 : value_end]
        pos = value_end
    return properties
