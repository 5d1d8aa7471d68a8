"""A raw ROUTER socket that plays broker for client tests, one behaviour function per test.

Real ZeroMQ on loopback, no broker logic: the behaviour sees each client REQUEST and
returns the frames to send back (or nothing), so tests can reorder, drop, duplicate or
garble replies, and close and rebind the socket to simulate a broker restart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import zmq

from mole.protocol import mdp
from mole.protocol.envelope import ReplyHeader, decode_request_header, error_reply
from tests.support.procs import bind_when_free, free_port


@dataclass
class Seen:
    routing_id: bytes
    service: str
    request_id: str
    ttl_ms: int | None
    attempt: int
    body: list[bytes]


def final(seen: Seen, *payload: bytes) -> list[bytes]:
    return [
        mdp.CLIENT_HEADER,
        mdp.CLIENT_FINAL,
        seen.service.encode(),
        ReplyHeader(seen.request_id).encode(),
        *payload,
    ]


def partial(seen: Seen, payload: bytes) -> list[bytes]:
    return [
        mdp.CLIENT_HEADER,
        mdp.CLIENT_PARTIAL,
        seen.service.encode(),
        ReplyHeader(seen.request_id).encode(),
        payload,
    ]


def error(seen: Seen, code: str, message: str) -> list[bytes]:
    return [
        mdp.CLIENT_HEADER,
        mdp.CLIENT_FINAL,
        seen.service.encode(),
        *error_reply(seen.request_id, code, message),
    ]


def echo(seen: Seen) -> list[list[bytes]]:
    return [final(seen, *seen.body)]


class FakeBroker:
    """ROUTER on ``port`` answering with ``behaviour(seen) -> [frames, ...]``."""

    def __init__(
        self, behaviour=echo, port: int | None = None, curve_secret: bytes | None = None
    ) -> None:
        self.curve_secret = curve_secret
        self.port = port or free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.behaviour = behaviour
        self.seen: list[Seen] = []
        self.raw: list[list[bytes]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5), "fake broker did not start"

    def _run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.linger = 0
        if self.curve_secret is not None:
            sock.curve_server = True
            sock.curve_secretkey = self.curve_secret
        # a broker "restarted" on the port of one just stopped may find libzmq still
        # closing the old listener (it does so in its I/O thread, after close returns)
        bind_when_free(sock, self.url, timeout=4)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(20):
                    continue
                ident, *frames = sock.recv_multipart()
                self.raw.append(frames)
                message = mdp.decode_client(frames)
                header = decode_request_header(message.body[0])
                seen = Seen(
                    ident,
                    message.service,
                    header.request_id,
                    header.ttl_ms,
                    header.attempt,
                    message.body[1:],
                )
                self.seen.append(seen)
                for reply in self.behaviour(seen) or []:
                    sock.send_multipart([ident, *reply])
        finally:
            sock.close(0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
