"""Majordomo peers written from the RFC texts alone, for interop tests with the broker.

Nothing here imports the project's protocol code: frames are the bytes RFC 7 (MDP/0.1)
and RFC 18 (MDP/0.2) give, on plain pyzmq sockets. A worker runs in a thread of the test
process and answers every REQUEST with ``reply(body)``; it records every command the
broker sent it, so tests can check heartbeats and DISCONNECTs in its framing.

RFC 7 worker (DEALER, so it writes the empty frame itself)::

    -> "" MDPW01 0x01 service                      READY
    <- "" MDPW01 0x02 client "" body...            REQUEST
    -> "" MDPW01 0x03 client "" body...            REPLY
    <> "" MDPW01 0x04                              HEARTBEAT
    <> "" MDPW01 0x05                              DISCONNECT

RFC 18 worker: ``MDPW02 0x01 service`` (READY), ``MDPW02 0x02 client "" body`` (REQUEST),
``0x03``/``0x04`` PARTIAL/FINAL, ``0x05`` HEARTBEAT, ``0x06`` DISCONNECT; with
``delimiter=True`` every message carries one empty frame first (majortomo's habit).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import zmq

RFC7 = {
    "header": b"MDPW01",
    "ready": b"\x01",
    "request": b"\x02",
    "reply": b"\x03",
    "heartbeat": b"\x04",
    "disconnect": b"\x05",
}
RFC18 = {
    "header": b"MDPW02",
    "ready": b"\x01",
    "request": b"\x02",
    "partial": b"\x03",
    "reply": b"\x04",
    "heartbeat": b"\x05",
    "disconnect": b"\x06",
}


class RfcWorker:
    """One Majordomo worker in a thread.

    Args:
        endpoint: the broker.
        service: the service to register (plain READY: no metadata frame).
        version: ``"0.1"`` (RFC 7) or ``"0.2"`` (RFC 18).
        delimiter: RFC 18 frames behind an empty frame (always so for RFC 7).
        reply: body frames of the answer to a request's body frames.
        partials: RFC 18 only: PARTIAL bodies sent before each FINAL.
        heartbeat: seconds between the worker's HEARTBEATs.
        answers: False makes a hung worker: it heartbeats but never answers a request.
    """

    def __init__(
        self,
        endpoint: str,
        service: str,
        *,
        version: str = "0.2",
        delimiter: bool = False,
        reply: Callable[[list[bytes]], list[bytes]] = lambda body: [b.upper() for b in body],
        partials: tuple[bytes, ...] = (),
        heartbeat: float = 0.2,
        answers: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.service = service.encode()
        self.grammar = RFC7 if version == "0.1" else RFC18
        self.prefix = [b""] if (version == "0.1" or delimiter) else []
        self.reply = reply
        self.partials = partials
        self.heartbeat = heartbeat
        self.answers = answers
        self.received: list[list[bytes]] = []  # every message from the broker, prefix removed
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RfcWorker:
        self._thread.start()
        return self

    def commands(self, name: str) -> int:
        """How many messages with command ``name`` the broker sent so far."""
        code = self.grammar[name]
        return sum(1 for m in list(self.received) if len(m) >= 2 and m[1] == code)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _send(self, sock: zmq.Socket, *frames: bytes) -> None:
        sock.send_multipart([*self.prefix, self.grammar["header"], *frames])

    def _run(self) -> None:
        g = self.grammar
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        self._send(sock, g["ready"], self.service)
        next_beat = time.monotonic() + self.heartbeat
        try:
            while not self._stop.is_set():
                if sock.poll(20):
                    frames = sock.recv_multipart()
                    if self.prefix:
                        assert frames[0] == b"", frames  # the broker answers in our framing
                        frames = frames[1:]
                    self.received.append(frames)
                    if frames[0] == g["header"] and frames[1] == g["request"]:
                        client, body = frames[2], frames[4:]
                        self.requests += 1
                        if not self.answers:
                            continue
                        for part in self.partials:
                            self._send(sock, g["partial"], client, b"", part)
                        self._send(sock, g["reply"], client, b"", *self.reply(body))
                    elif frames[1:2] == [g["disconnect"]]:
                        self._send(sock, g["ready"], self.service)  # as the RFCs suggest
                if time.monotonic() >= next_beat:
                    self._send(sock, g["heartbeat"])
                    next_beat = time.monotonic() + self.heartbeat
        finally:
            sock.close(0)


def rfc7_client_request(
    endpoint: str, service: bytes, *body: bytes, timeout: float = 10.0
) -> list[bytes] | None:
    """RFC 7 client on a REQ socket: send ``MDPC01 service body``, return the reply frames.

    The REQ socket adds and strips the empty frame itself. None when nothing came back.
    """
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"MDPC01", service, *body])
        if not sock.poll(int(timeout * 1000)):
            return None
        return sock.recv_multipart()
    finally:
        sock.close(0)


def rfc18_client_request(
    endpoint: str, service: bytes, *body: bytes, req_socket: bool = False, timeout: float = 10.0
) -> list[list[bytes]]:
    """RFC 18 client: send ``MDPC02 0x01 service body``, return every message until FINAL.

    ``req_socket``: on a REQ socket (which adds the empty delimiter frame); else a DEALER
    as RFC 18 describes. An empty list when nothing came back in time.
    """
    kind = zmq.REQ if req_socket else zmq.DEALER
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    got: list[list[bytes]] = []
    try:
        sock.send_multipart([b"MDPC02", b"\x01", service, *body])
        end = time.monotonic() + timeout
        while sock.poll(max(0, int((end - time.monotonic()) * 1000))):
            frames = sock.recv_multipart()
            got.append(frames)
            if frames[1] == b"\x03" or req_socket:  # a REQ socket gets exactly one answer
                break
        return got
    finally:
        sock.close(0)
