"""The body of every MoLE message: a msgpack header frame, then a msgpack payload frame.

The broker decodes only the small header (request id, time-to-live, attempt), never the
payload, and forwards the payload frame untouched. A body that does not start with a
header map of ours is an opaque RFC 18 body from a third-party peer: the broker still
routes it, with its default deadline.

Request header (client -> broker -> worker)::

    {"v": 1, "id": "<request id>", "ttl": <ms left when sent>, "attempt": <int>}

Reply header (worker or broker -> client)::

    {"v": 1, "id": "<request id>", "ok": true}
    {"v": 1, "id": "<request id>", "ok": false, "code": "<ErrorCode>", "msg": "..."}

``ttl`` is relative (milliseconds), not an absolute time, so the clocks of different
machines never need to agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from mole.protocol.errors import ErrorCode, MalformedMessage

VERSION = 1

#: Largest header frame we decode. A header is a few dozen bytes; anything bigger is junk.
MAX_HEADER_BYTES = 4096


def pack(obj: Any) -> bytes:
    """msgpack with the options every peer in this project uses."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def unpack(data: bytes) -> Any:
    """Inverse of :func:`pack`; raises :class:`MalformedMessage` on bad bytes."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as err:  # msgpack raises several unrelated types
        raise MalformedMessage(f"payload is not valid msgpack: {err}") from err


@dataclass(slots=True)
class RequestHeader:
    request_id: str
    ttl_ms: int | None = None
    attempt: int = 0

    def encode(self) -> bytes:
        header: dict[str, Any] = {"v": VERSION, "id": self.request_id, "attempt": self.attempt}
        if self.ttl_ms is not None:
            header["ttl"] = int(self.ttl_ms)
        return pack(header)


@dataclass(slots=True)
class ReplyHeader:
    request_id: str
    ok: bool = True
    code: str | None = None
    message: str | None = None
    details: Any = None

    def encode(self) -> bytes:
        header: dict[str, Any] = {"v": VERSION, "id": self.request_id, "ok": self.ok}
        if not self.ok:
            header["code"] = self.code or ErrorCode.INTERNAL.value
            header["msg"] = self.message or ""
            if self.details is not None:
                header["details"] = self.details
        return pack(header)


def _header_map(frame: bytes) -> dict[str, Any] | None:
    """The header dict if ``frame`` is one of ours, else None (an opaque body)."""
    if not frame or len(frame) > MAX_HEADER_BYTES or frame[0] & 0xF0 != 0x80:
        return None  # msgpack fixmap starts 0x80..0x8f; our headers are small maps
    try:
        header = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:
        return None
    if not isinstance(header, dict) or header.get("v") != VERSION or "id" not in header:
        return None
    return header


def decode_request_header(frame: bytes) -> RequestHeader | None:
    """Parse a request header frame; None when the body is not in our envelope."""
    header = _header_map(frame)
    if header is None:
        return None
    ttl = header.get("ttl")
    attempt = header.get("attempt", 0)
    # bool is a subclass of int in Python; ``"ttl": true`` is junk, not 1 ms.
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int)):
        raise MalformedMessage("header ttl must be an integer number of milliseconds")
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        raise MalformedMessage("header attempt must be an integer")
    return RequestHeader(str(header["id"]), ttl, attempt)


def decode_reply_header(frame: bytes) -> ReplyHeader:
    """Parse a reply header frame.

    Raises:
        MalformedMessage: the frame is not a reply header of ours.
    """
    header = _header_map(frame)
    if header is None:
        raise MalformedMessage("reply does not start with a MoLE header frame")
    ok = bool(header.get("ok", True))
    return ReplyHeader(
        request_id=str(header["id"]),
        ok=ok,
        code=None if ok else str(header.get("code", ErrorCode.INTERNAL.value)),
        message=None if ok else str(header.get("msg", "")),
        details=header.get("details"),
    )


def error_reply(
    request_id: str, code: ErrorCode | str, message: str, details: Any = None
) -> list[bytes]:
    """The body frames of an error reply: a header only, no payload."""
    return [ReplyHeader(request_id, False, str(code), message, details).encode()]
