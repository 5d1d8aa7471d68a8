"""MDP/0.2 peers on plain pyzmq sockets, written from RFC 18 for the operator-side tests.

They do not use the project's protocol package, so a test that uses them checks the broker
and the stack as a third-party (or hostile) peer sees them.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import zmq

from tests.support.procs import wait_until

ROOT = Path(__file__).resolve().parents[2]
CLIENT = b"MDPC02"
WORKER = b"MDPW02"
REQUEST, FINAL = b"\x01", b"\x03"
READY, W_REQUEST, W_FINAL, HEARTBEAT, DISCONNECT = b"\x01", b"\x02", b"\x04", b"\x05", b"\x06"


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def dealer(endpoint: str, curve: tuple[bytes, bytes, bytes] | None = None) -> zmq.Socket:
    """A DEALER connected to ``endpoint``; ``curve`` = (server public, public, secret)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    sock.connect(endpoint)
    return sock


def offer(sock: zmq.Socket, frames: list[bytes]) -> bool:
    """Send without blocking; False when the socket has no connection to queue it on (a
    DEALER whose CURVE handshake is refused ends up so)."""
    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


def request_frames(service: str, payload: Any, ttl_ms: int = 5000) -> list[bytes]:
    """A client REQUEST in the project's two-frame envelope (docs/interfaces.md)."""
    header = {"v": 1, "id": uuid.uuid4().hex, "attempt": 0, "ttl": ttl_ms}
    return [CLIENT, REQUEST, service.encode(), pack(header), pack(payload)]


def mmi_service(sock: zmq.Socket, service: str, timeout: float = 5.0) -> bytes | None:
    """Ask ``mmi.service`` about ``service`` (plain RFC 8 body); the status bytes or None."""
    if not offer(sock, [CLIENT, REQUEST, b"mmi.service", service.encode()]):
        return None
    if not sock.poll(int(timeout * 1000)):
        return None
    frames = sock.recv_multipart()
    return frames[-1]


def wait_for_broker(endpoint: str, timeout: float = 30.0) -> bool:
    """True once a broker at ``endpoint`` answers ``mmi.service``."""

    def answers() -> bool:
        sock = dealer(endpoint)
        try:
            return mmi_service(sock, "nothing", timeout=1.0) is not None
        finally:
            sock.close(0)

    return bool(wait_until(answers, timeout))


def mole(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mole ARGV`` to completion and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "mole", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def mmi_status(sock: zmq.Socket, timeout: float = 5.0) -> dict[str, Any] | None:
    """The broker's ``mmi.status`` document (our envelope), or None without an answer."""
    sock.send_multipart(request_frames("mmi.status", {}))
    if not sock.poll(int(timeout * 1000)):
        return None
    frames = sock.recv_multipart()
    document: dict[str, Any] = unpack(frames[-1])
    return document


def recv_reply(sock: zmq.Socket, timeout: float) -> tuple[dict[str, Any], Any] | None:
    """The next FINAL's (reply header, payload) in our envelope, skipping PARTIALs."""
    end = time.monotonic() + timeout
    while sock.poll(max(0, int((end - time.monotonic()) * 1000))):
        frames = sock.recv_multipart()
        if frames[1] != FINAL:
            continue
        header = unpack(frames[3])
        payload = unpack(frames[4]) if len(frames) > 4 else None
        return header, payload
    return None
