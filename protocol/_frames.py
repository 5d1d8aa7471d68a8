"""Non-blocking multipart send and receive, without pyzmq's per-call overheads.

pyzmq's ``send_multipart``/``recv_multipart`` and its enum flags cost more than the
system work on small frames (measured here: OR-ing two enum flags 1.3 us, an enum flag
instead of an int 0.4 us per send, ``recv_multipart`` about 1.5x a plain loop). The
clients and the worker runtime move every message through these two functions.
"""

from __future__ import annotations

import zmq

SEND_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)


def send_frames(socket: zmq.Socket, frames: list[bytes]) -> None:
    """Send one multipart message without blocking; raises ``zmq.Again`` if it cannot."""
    send = socket.send
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        send(frame, SEND_MORE if i < last else NOBLOCK)


def recv_frames(socket: zmq.Socket) -> list[bytes] | None:
    """The next multipart message, or None when none is waiting."""
    try:
        frames = [socket.recv(NOBLOCK)]
    except zmq.Again:
        return None
    recv, more = socket.recv, socket.getsockopt
    while more(_RCVMORE):
        frames.append(recv(NOBLOCK))
    return frames
