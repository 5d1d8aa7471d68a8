"""The broker's reading of a request header (``broker.header``) against msgpack's.

The broker decodes every request's header with msgspec straight into its fields (a third
of the cost of ``msgpack.unpackb`` and checks in Python); the reference here is the rule
as docs/interfaces.md gives it, applied to what ``msgpack.unpackb`` reads: a msgpack map
(at most MAX_HEADER_BYTES) with ``"v": 1`` and an ``"id"`` is ours; it is bad when
``ttl`` (if given and not nil) or ``attempt`` (if given) is not an integer (``true`` is
not one); anything else is an opaque RFC 18 body.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mole.broker.header import BAD_HEADER, read_request_header
from mole.protocol.envelope import MAX_HEADER_BYTES

OPAQUE = "opaque"
BAD = "bad"


def reference(frame: bytes) -> Any:
    """What the header means, read with msgpack: opaque, bad, or (id, ttl, attempt)."""
    if not frame or frame[0] & 0xF0 != 0x80 or len(frame) > MAX_HEADER_BYTES:
        return OPAQUE
    try:
        header = msgpack.unpackb(frame)
    except Exception:
        return OPAQUE
    if header.get("v") != 1 or "id" not in header:
        return OPAQUE
    ttl = header.get("ttl")
    attempt = header.get("attempt", 0)
    if (ttl is not None and type(ttl) is not int) or type(attempt) is not int:
        return BAD
    return (str(header["id"]), ttl, attempt)


def engine_reading(frame: bytes) -> Any:
    fields = read_request_header(frame)
    if fields is None:
        return OPAQUE
    if fields is BAD_HEADER:
        return BAD
    return (fields.id, fields.ttl, fields.attempt)


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=20),
    st.lists(st.integers(min_value=-(2**31), max_value=2**31), max_size=3),
)
keys = st.sampled_from(["v", "id", "ttl", "attempt", "ok", "trace"]) | st.text(max_size=8)
headers = st.dictionaries(keys, values, max_size=6) | st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1.0, 2, True]), "id": values},
    optional={"ttl": values, "attempt": values, "extra": values},
)


@settings(max_examples=200, deadline=None)
@given(headers)
def test_a_header_reads_as_msgpack_reads_it(header):
    frame = msgpack.packb(header, use_bin_type=True)
    assert engine_reading(frame) == reference(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_read_as_msgpack_reads_them(frame):
    assert engine_reading(frame) == reference(frame)


@pytest.mark.parametrize(
    ("frame", "meaning"),
    [
        (msgpack.packb({"v": 1, "id": "r1", "attempt": 0, "ttl": 30_000}), "ours"),
        (msgpack.packb({"v": 1, "id": "r1", "ttl": True}), BAD),
        (msgpack.packb({"v": 1, "id": "r1", "attempt": "2"}), BAD),
        (msgpack.packb({"v": 1, "id": "r1"}) + b"\x00", OPAQUE),  # trailing bytes
        (msgpack.packb({"v": 1, "id": "r1"})[:-1], OPAQUE),  # truncated
        (msgpack.packb({"v": 2, "id": "r1"}), OPAQUE),
        (msgpack.packb({"v": 1, "id": "x" * MAX_HEADER_BYTES}), OPAQUE),  # too long
    ],
)
def test_examples(frame, meaning):
    reading = engine_reading(frame)
    assert reading == reference(frame)
    assert (reading if reading in (BAD, OPAQUE) else "ours") == meaning
