"""msgpack envelopes: headers round-trip, foreign bodies are recognised, junk is rejected."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mole.protocol import envelope
from mole.protocol.envelope import (
    ReplyHeader,
    RequestHeader,
    decode_reply_header,
    decode_request_header,
    error_reply,
    pack,
    unpack,
)
from mole.protocol.errors import ErrorCode, MalformedMessage


def test_request_header_round_trip():
    frame = RequestHeader("abc-1", ttl_ms=1500, attempt=2).encode()
    assert msgpack.unpackb(frame) == {"v": 1, "id": "abc-1", "ttl": 1500, "attempt": 2}
    assert decode_request_header(frame) == RequestHeader("abc-1", 1500, 2)


def test_request_header_without_ttl():
    header = decode_request_header(RequestHeader("x").encode())
    assert header.ttl_ms is None
    assert header.attempt == 0


def test_reply_headers_ok_and_error():
    ok = decode_reply_header(ReplyHeader("r1").encode())
    assert ok.ok
    assert ok.code is None
    assert ok.request_id == "r1"
    [frame] = error_reply("r2", ErrorCode.OVERLOADED, "queue full", {"depth": 3})
    err = decode_reply_header(frame)
    assert (err.ok, err.code, err.message, err.details) == (
        False,
        "overloaded",
        "queue full",
        {"depth": 3},
    )


def test_error_header_without_code_means_internal():
    frame = pack({"v": 1, "id": "r", "ok": False})
    assert decode_reply_header(frame).code == ErrorCode.INTERNAL.value


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"plain text body",
        pack([1, 2, 3]),
        pack({"v": 2, "id": "x"}),  # another version
        pack({"v": 1}),  # no id
        pack({"id": "x"}),  # no version
        b"\x81\xc1",  # starts like a map, invalid msgpack
        b"\x8f" + b"\x00" * 5000,  # too big to be a header
    ],
)
def test_foreign_bodies_are_not_request_headers(frame):
    assert decode_request_header(frame) is None
    with pytest.raises(MalformedMessage):
        decode_reply_header(frame)


@pytest.mark.parametrize(
    "header",
    [
        {"v": 1, "id": "x", "ttl": "soon"},
        {"v": 1, "id": "x", "ttl": 1.5},
        {"v": 1, "id": "x", "attempt": "2"},
        {"v": 1, "id": "x", "ttl": True},
        {"v": 1, "id": "x", "attempt": False},
    ],
)
def test_request_header_with_bad_field_types(header):
    with pytest.raises(MalformedMessage):
        decode_request_header(pack(header))


def test_pack_unpack_keeps_bytes_and_str_apart():
    obj = {"text": "héllo", "blob": b"\x00\xff", "n": [1, 2.5, None, True], 3: "int key"}
    assert unpack(pack(obj)) == obj


@pytest.mark.parametrize("junk", [b"\xc1", b"\x92\x01", b"\x81\xa1a", b""])
def test_unpack_junk_raises_malformed(junk):
    with pytest.raises(MalformedMessage):
        unpack(junk)


def test_header_size_limit_constant_is_respected():
    big = RequestHeader("x" * envelope.MAX_HEADER_BYTES).encode()
    assert decode_request_header(big) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_but_malformed(data):
    with contextlib.suppress(MalformedMessage):
        decode_request_header(data)
    with contextlib.suppress(MalformedMessage):
        decode_reply_header(data)
    with contextlib.suppress(MalformedMessage):
        unpack(data)
