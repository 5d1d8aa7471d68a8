"""A raw ROUTER socket that plays broker for worker-runtime tests.

A thread owns the socket: it records every message a worker sends (heartbeats counted
with their times), sends what the test queues, and heartbeats every worker it has heard
from, unless ``silent`` is set (to make the worker think the broker is gone).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable

import zmq

from mole.protocol import mdp
from mole.protocol.envelope import RequestHeader, decode_reply_header, pack, unpack
from tests.support.procs import bind_when_free, free_port


class RawBroker:
    def __init__(
        self,
        port: int | None = None,
        heartbeat_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.port = port or free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.heartbeat_interval = heartbeat_interval
        self.silent = False
        self.inbox: queue.Queue = queue.Queue()
        self.heartbeats: dict[bytes, list[float]] = collections.defaultdict(list)
        self.workers: list[bytes] = []
        self._out: collections.deque = collections.deque()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(15)

    def _run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.linger = 0
        # a broker "restarted" on the same port may find the previous socket still closing
        # (its thread is slow to stop on a loaded machine): wait for the port to be free
        bind_when_free(sock, self.url, timeout=10)
        self._ready.set()
        # the first heartbeat is due an interval after start, not at once: on a fake clock
        # the test decides when it goes, and a worker that registers fast hears nothing first
        next_beat = self.clock() + self.heartbeat_interval
        try:
            while not self._stop.is_set():
                if sock.poll(5):
                    ident, *frames = sock.recv_multipart()
                    message = mdp.decode_worker(frames)
                    if message.command == mdp.WorkerCommand.HEARTBEAT:
                        self.heartbeats[ident].append(self.clock())
                    else:
                        if message.command == mdp.WorkerCommand.READY:
                            self.workers.append(ident)
                        self.inbox.put((ident, message))
                while self._out:
                    sock.send_multipart(self._out.popleft())
                now = self.clock()
                if now >= next_beat:
                    next_beat = now + self.heartbeat_interval
                    if not self.silent:
                        for ident in self.workers:
                            sock.send_multipart([ident, mdp.WORKER_HEADER, mdp.W_HEARTBEAT])
        finally:
            sock.close(0)

    def expect(self, *commands: mdp.WorkerCommand, timeout: float = 10.0):
        """Next non-heartbeat message (ident, WorkerMessage); asserts its command."""
        ident, message = self.inbox.get(timeout=timeout)
        if commands:
            assert message.command in commands, (message.command, message.body)
        return ident, message

    def send(self, ident: bytes, frames: list[bytes]) -> None:
        self._out.append([ident, *frames])

    def request(
        self,
        ident: bytes,
        ticket: bytes,
        payload,
        *,
        request_id: str = "r",
        ttl_ms: int | None = 5000,
        body: list[bytes] | None = None,
    ) -> None:
        if body is None:
            body = [RequestHeader(request_id, ttl_ms).encode(), pack(payload)]
        self.send(ident, mdp.encode_worker(mdp.WorkerCommand.REQUEST, client=ticket, body=body))

    def disconnect(self, ident: bytes) -> None:
        self.workers.remove(ident)
        self.send(ident, [mdp.WORKER_HEADER, mdp.W_DISCONNECT])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def reply_of(message) -> tuple:
    """(header, payload) of a worker FINAL/PARTIAL in our envelope."""
    header = decode_reply_header(message.body[0])
    payload = unpack(message.body[1]) if len(message.body) > 1 else None
    return header, payload
