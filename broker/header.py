"""The broker's reading of a request header: the fields it routes by, decoded once.

A request's first body frame is our header (docs/interfaces.md) when it is a msgpack map
with ``"v": 1`` and an ``"id"``; ``ttl`` (milliseconds, or nil) and ``attempt`` must then
be integers (``true`` is not one), else the request is refused as bad. Anything else is an
opaque RFC 18 body, routed with the broker's default deadline.

Why a module: the broker reads one header per request, and reading it was the largest
single part of its work per request (``msgpack.unpackb`` builds and interns four key
strings, then Python checks each field). :data:`_decode_fields` decodes the header our
client library writes straight into :class:`RequestFields` with its types checked, in one
call at about a third of that cost; any header it does not take (another id type, a float
``v``, bad types, not a map) is read again with ``msgpack`` and the rule above, so both
paths give the same answer (tests/broker/test_engine_header.py checks it against msgpack).
"""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec

from mole.protocol.envelope import MAX_HEADER_BYTES, VERSION


class RequestFields(msgspec.Struct, gc=False):
    """The fields of our request header the broker uses (other keys are not kept here;
    the header frame itself is forwarded as received)."""

    v: int
    id: str
    ttl: int | None = None
    attempt: int = 0


#: A header of ours with a field of the wrong type: the request gets ``bad_request``.
BAD_HEADER = RequestFields(v=VERSION, id="")

_decode_fields = msgspec.msgpack.Decoder(RequestFields).decode


def read_request_header(frame: bytes) -> RequestFields | None:
    """Our header's fields, :data:`BAD_HEADER` when a field has the wrong type, or None
    for an opaque body.

    ``frame`` is ``bytes``: the shell copies a message's first frames, the header among them.
    """
    if not frame or frame[0] & 0xF0 != 0x80 or len(frame) > MAX_HEADER_BYTES:
        return None  # not a msgpack fixmap: an opaque RFC 18 body
    try:
        fields = _decode_fields(frame)
    except msgspec.MsgspecError:
        return _read_with_msgpack(frame)
    if fields.v != VERSION:
        return _read_with_msgpack(frame)
    return fields


def _read_with_msgpack(frame: bytes) -> RequestFields | None:
    """The rule of the module docstring on what ``msgpack.unpackb`` reads."""
    try:  # msgpack's defaults: str for strings, str or bytes map keys only
        header: Any = msgpack.unpackb(frame)
    except Exception:
        return None
    if header.get("v") != VERSION or "id" not in header:  # a fixmap decodes to a dict
        return None
    ttl = header.get("ttl")
    attempt = header.get("attempt", 0)
    # type() rather than isinstance(): a bool is an int to isinstance, and ``true`` is junk
    if (ttl is not None and type(ttl) is not int) or type(attempt) is not int:
        return BAD_HEADER
    return RequestFields(VERSION, str(header["id"]), ttl, attempt)
