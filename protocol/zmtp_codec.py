"""ZMTP 3 framing (rfc.zeromq.org specs 23 and 37): frames to bytes and bytes to frames.

After the 64-octet greeting everything on a ZMTP connection is a frame: one flags octet
(bit 0 MORE, bit 1 LONG, bit 2 COMMAND, bits 3-7 zero), then the body size in one octet
(short frame, 0-255) or eight octets in network order (long frame), then the body. A
message is a run of frames with MORE set on all but the last; a command is one frame whose
body is a length-prefixed name and its data.

This module knows nothing of sockets or security: the native transport feeds it what the
event loop read and hands it the frames to write. It is written from the specifications
(no code of libzmq or another implementation), and tested against libzmq itself.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from mole.protocol.errors import ProtocolMismatch

FLAG_MORE = 0x01
FLAG_LONG = 0x02
FLAG_COMMAND = 0x04
_RESERVED = 0xFF & ~(FLAG_MORE | FLAG_LONG | FLAG_COMMAND)

#: Largest body a short frame carries; a longer one needs the eight-octet size.
SHORT_MAX = 255

_LONG_HEAD = struct.Struct("!BQ")
_read_long_size = struct.Struct("!Q").unpack_from
# Heads of short frames: two octets, made once (indexing a tuple beats struct.pack here).
_SHORT_LAST = tuple(bytes((0, n)) for n in range(SHORT_MAX + 1))
_SHORT_MORE = tuple(bytes((FLAG_MORE, n)) for n in range(SHORT_MAX + 1))
_SHORT_COMMAND = tuple(bytes((FLAG_COMMAND, n)) for n in range(SHORT_MAX + 1))


def encode_message(frames: Sequence[bytes]) -> bytes:
    """One message as the bytes to write: MORE on every frame but the last."""
    parts: list[bytes] = []
    append = parts.append
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        size = len(frame)
        if size <= SHORT_MAX:
            append(_SHORT_MORE[size] if i < last else _SHORT_LAST[size])
        else:
            append(_LONG_HEAD.pack((FLAG_MORE if i < last else 0) | FLAG_LONG, size))
        append(frame)
    return b"".join(parts)


def encode_command(name: bytes, data: bytes = b"") -> bytes:
    """One command frame: ``name`` (1-255 octets) with its length in front, then ``data``."""
    if not 0 < len(name) <= SHORT_MAX:
        raise ValueError(f"a ZMTP command name has 1 to 255 octets, not {len(name)}")
    return command_frame(bytes((len(name),)) + name + data)


def command_frame(body: bytes) -> bytes:
    """A command frame around an already built body (name and data)."""
    size = len(body)
    if size <= SHORT_MAX:
        return _SHORT_COMMAND[size] + body
    return _LONG_HEAD.pack(FLAG_COMMAND | FLAG_LONG, size) + body


def single_frame(body: bytes) -> bytes:
    """A one-frame message (MORE clear) around ``body``."""
    size = len(body)
    if size <= SHORT_MAX:
        return _SHORT_LAST[size] + body
    return _LONG_HEAD.pack(FLAG_LONG, size) + body


def split_command(body: bytes) -> tuple[bytes, bytes]:
    """``(name, data)`` of a command body.

    Raises:
        ProtocolMismatch: the body has no valid name.
    """
    if not body or body[0] == 0 or len(body) < 1 + body[0]:
        raise ProtocolMismatch(f"malformed ZMTP command {bytes(body[:16])!r}")
    end = 1 + body[0]
    return bytes(body[1:end]), bytes(body[end:])


class FrameDecoder:
    """Turns the byte stream after the greeting back into messages and commands.

    ``feed`` parses every complete frame in what has arrived and calls ``on_message``
    with the frames of each complete message, ``on_command`` with the body of each
    command; a partial frame waits in a buffer for the next read. ``max_message_bytes``
    bounds one message, all its frames together (so one frame too), and is checked on
    each frame's size field before its body is buffered: a peer can make the process
    hold no more than that, whether in one huge frame or in frames with MORE set that
    never end.

    A callback may call :meth:`halt` (its connection is closing): nothing more is
    parsed or delivered after it.
    """

    __slots__ = (
        "_buffer",
        "_halted",
        "_message_bytes",
        "_parts",
        "max_message_bytes",
        "on_command",
        "on_message",
    )

    def __init__(
        self,
        on_message: Callable[[list[bytes]], None],
        on_command: Callable[[bytes], None],
        max_message_bytes: int,
    ) -> None:
        self.on_message = on_message
        self.on_command = on_command
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._parts: list[bytes] = []
        self._message_bytes = 0  # bodies of the unfinished message's frames so far
        self._halted = False

    def halt(self) -> None:
        """Stop parsing and delivering (the connection is going away)."""
        self._halted = True
        self._buffer = bytearray()
        self._parts = []
        self._message_bytes = 0

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame waiting for the rest."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> None:
        """Parse ``data`` (the next bytes read) after what is buffered.

        Raises:
            ProtocolMismatch: reserved flag bits set, a command inside a message or with
                MORE set, a frame or a message over ``max_message_bytes``.
        """
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data  # the common case: whole frames in one read, no copy into a buffer
        end = len(view)
        pos = 0
        parts = self._parts
        limit = self.max_message_bytes
        taken = self._message_bytes  # bodies of the unfinished message's frames
        while end - pos >= 2 and not self._halted:
            flags = view[pos]
            if flags & FLAG_LONG:
                if end - pos < 9:
                    break
                size = _read_long_size(view, pos + 1)[0]
                start = pos + 9
            else:
                size = view[pos + 1]
                start = pos + 2
            if flags & _RESERVED:
                raise ProtocolMismatch(f"ZMTP frame with reserved flag bits set: {flags:#04x}")
            if size > limit - taken:
                raise ProtocolMismatch(self._over_limit(size, taken))
            stop = start + size
            if stop > end:
                break
            body = bytes(view[start:stop])
            pos = stop
            if flags & FLAG_COMMAND:
                if flags & FLAG_MORE or parts:
                    raise ProtocolMismatch("ZMTP command frame inside a multipart message")
                self.on_command(body)
            elif flags & FLAG_MORE:
                parts.append(body)
                taken += size
            else:
                parts.append(body)
                self._parts = []
                taken = 0
                self.on_message(parts)
                parts = self._parts
        if self._halted:
            return
        self._message_bytes = taken
        if view is buffer:
            del buffer[:pos]
        elif pos < end:
            self._buffer = bytearray(view[pos:])

    def _over_limit(self, size: int, taken: int) -> str:
        limit = f"over this connection's limit of {self.max_message_bytes} bytes"
        if not taken:
            return f"ZMTP frame of {size} bytes is {limit}"
        return (
            f"ZMTP message of {len(self._parts) + 1} frames and at least "
            f"{taken + size} bytes is {limit}"
        )
