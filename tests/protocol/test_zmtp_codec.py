"""ZMTP framing, greeting and metadata against the bytes the specifications spell out.

The references here are written from rfc.zeromq.org specs 23/37 directly (flag octets,
sizes, the worked example's READY command octet by octet), not from the module under
test; the tests against libzmq itself are in ``test_zmtp_libzmq.py``.
"""

from __future__ import annotations

import struct

import pytest

from mole.protocol.errors import ProtocolMismatch
from mole.protocol.zmtp_codec import (
    FrameDecoder,
    encode_command,
    encode_message,
    single_frame,
    split_command,
)
from mole.protocol.zmtp_greeting import (
    check_greeting_start,
    decode_metadata,
    encode_metadata,
    greeting,
    parse_greeting,
)
from mole.protocol.zmtp_mechanism import NullMechanism


def reference_frame(body: bytes, *, more: bool = False, command: bool = False) -> bytes:
    """Spec 37 "Framing": flags (bit 0 MORE, bit 1 LONG, bit 2 COMMAND), then the size in
    one octet (0-255) or eight octets in network order, then the body."""
    flags = (1 if more else 0) | (4 if command else 0)
    if len(body) > 255:
        return bytes([flags | 2]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


class Collector:
    def __init__(self, max_message_bytes: int = 1 << 30) -> None:
        self.messages: list[list[bytes]] = []
        self.commands: list[bytes] = []
        self.decoder = FrameDecoder(self.messages.append, self.commands.append, max_message_bytes)


SIZES = [0, 1, 254, 255, 256, 257, 70_000]


@pytest.mark.parametrize("size", SIZES)
def test_frame_sizes_short_and_long(size):
    body = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert encode_message([body]) == reference_frame(body)
    assert encode_message([body, b"x"]) == reference_frame(body, more=True) + reference_frame(b"x")
    assert single_frame(body) == reference_frame(body)


def test_long_flag_starts_at_256_bytes():
    assert encode_message([b"a" * 255])[:2] == b"\x00\xff"
    assert encode_message([b"a" * 256])[:9] == b"\x02" + struct.pack("!Q", 256)


def test_multipart_message_and_empty_frames():
    frames = [b"MDPC02", b"", b"\x01", b"x" * 300, b""]
    wire = encode_message(frames)
    expected = b"".join(reference_frame(f, more=i < len(frames) - 1) for i, f in enumerate(frames))
    assert wire == expected


def test_decoder_takes_any_split_of_the_stream():
    messages = [[b"a", b"b" * 300, b""], [b"c" * 70_000], [b""]]
    stream = b"".join(encode_message(m) for m in messages)
    stream += reference_frame(b"\x04PING\x00\x00", command=True)
    for chunk in (1, 2, 7, 9, 100, 4096, len(stream)):
        got = Collector()
        for i in range(0, len(stream), chunk):
            got.decoder.feed(stream[i : i + chunk])
        assert got.messages == messages, chunk
        assert got.commands == [b"\x04PING\x00\x00"]
        assert got.decoder.buffered == 0


def test_commands_by_name():
    wire = encode_command(b"READY", b"props")
    assert wire == reference_frame(b"\x05READYprops", command=True)
    assert split_command(b"\x05READYprops") == (b"READY", b"props")
    long = encode_command(b"MESSAGE", b"z" * 300)
    assert long[0] == 0x06  # COMMAND | LONG
    with pytest.raises(ProtocolMismatch, match="malformed ZMTP command"):
        split_command(b"\x09READY")


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"\x08\x00", "reserved flag bits"),
        (b"\x01\x01a" + reference_frame(b"\x04PING", command=True), "inside a multipart"),
        (b"\x05\x05\x04PING", "inside a multipart"),  # command with MORE set
        (reference_frame(b"x" * 300), "over this connection's limit"),
        # frames each under the limit, a message over it (seen before the body is read)
        (reference_frame(b"x" * 200, more=True) + b"\x00\x64", "message of 2 frames"),
    ],
)
def test_decoder_refuses_broken_framing(wire, match):
    got = Collector(max_message_bytes=256)
    with pytest.raises(ProtocolMismatch, match=match):
        got.decoder.feed(wire)


def test_decoder_halt_stops_delivery():
    got = Collector()

    def first_then_halt(frames):
        got.messages.append(frames)
        got.decoder.halt()

    got.decoder.on_message = first_then_halt
    got.decoder.feed(encode_message([b"1"]) + encode_message([b"2"]))
    assert got.messages == [[b"1"]]


def test_greeting_octets():
    g = greeting(b"NULL")
    assert len(g) == 64
    assert g[0] == 0xFF
    assert g[9] == 0x7F
    assert g[10:12] == b"\x03\x01"
    assert g[12:32] == b"NULL" + bytes(16)
    assert g[32] == 0
    assert g[33:] == bytes(31)
    peer = parse_greeting(greeting(b"CURVE", as_server=True), "peer")
    assert peer.version == (3, 1)
    assert peer.mechanism == b"CURVE"
    assert peer.as_server


@pytest.mark.parametrize(
    ("start", "match"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n", "does not speak ZMTP"),
        (b"\x16\x03\x01\x02\x00", "does not speak ZMTP"),  # a TLS handshake
        (b"\xff" + bytes(8) + b"\x00", "does not speak ZMTP"),  # ZMTP 1.0 identity length
        (b"\xff" + bytes(8) + b"\x7f\x01", r"speaks ZMTP 1\.x"),
    ],
)
def test_greeting_refuses_other_protocols_early(start, match):
    with pytest.raises(ProtocolMismatch, match=match):
        check_greeting_start(start, "tcp://somewhere:1")


def test_a_later_zmtp_version_is_accepted():
    later = bytearray(greeting(b"NULL"))
    later[10:12] = b"\x04\x00"
    assert parse_greeting(bytes(later), "peer").version == (4, 0)


def test_ready_command_matches_the_specs_worked_example():
    # spec 37, "Worked Example": a DEALER's READY with Socket-Type DEALER and an empty
    # Identity is %x04 41, then [5]"READY", [11]"Socket-Type" [0,0,0,6]"DEALER",
    # [8]"Identity" [0,0,0,0]
    example = (
        bytes([0x04, 41, 5])
        + b"READY"
        + bytes([11])
        + b"Socket-Type"
        + bytes([0, 0, 0, 6])
        + b"DEALER"
        + bytes([8])
        + b"Identity"
        + bytes([0, 0, 0, 0])
    )
    assert NullMechanism(b"", "peer").start() == example


def test_metadata_round_trip_and_case():
    data = encode_metadata({"Socket-Type": b"ROUTER", "X-Big": b"v" * 300})
    assert decode_metadata(data, "p") == {"socket-type": b"ROUTER", "x-big": b"v" * 300}
    with pytest.raises(ProtocolMismatch, match="malformed ZMTP metadata"):
        decode_metadata(data[:-1], "p")
    with pytest.raises(ProtocolMismatch, match="malformed ZMTP metadata"):
        decode_metadata(b"\x00\x00\x00\x00\x00", "p")


def test_null_handshake_refuses_a_wrong_socket_type_and_reports_error():
    mechanism = NullMechanism(b"id", "tcp://x:1")
    with pytest.raises(ProtocolMismatch, match=r"b'PUB' socket"):
        mechanism.on_handshake_command(b"\x05READY" + encode_metadata({"Socket-Type": b"PUB"}))
    with pytest.raises(Exception, match="refused the NULL handshake: go away"):
        NullMechanism(b"id", "tcp://x:1").on_handshake_command(b"\x05ERROR\x07go away")
    ok = NullMechanism(b"id", "tcp://x:1")
    ok.on_handshake_command(b"\x05READY" + encode_metadata({"Socket-Type": b"ROUTER"}))
    assert ok.ready
    assert ok.peer_properties == {"socket-type": b"ROUTER"}
