"""A logic-free Python ROUTER-to-ROUTER forwarder: the reference the broker is measured against.

Clients connect to ``--frontend``, workers to ``--backend``; both speak the same MDP/0.2
frames as with the real broker, so the benchmark's clients and echo workers are unchanged.
It keeps no queues, deadlines, tickets, heartbeats or counters: a client request goes to
the next worker in round robin with the client's routing id as the address, and a worker's
FINAL goes back to that id. It uses the same socket habits as the broker (drain with
NOBLOCK until Again, send frame by frame with SNDMORE), so the difference between the two
is the broker's bookkeeping.

    python tests/benchmarks/forwarder.py --frontend tcp://127.0.0.1:5601 \
        --backend tcp://127.0.0.1:5602
"""

from __future__ import annotations

import argparse
import signal
import sys

import zmq
import zmq.backend

C_HDR, C_FINAL = b"MDPC02", b"\x03"
W_HDR, W_READY, W_REQUEST, W_FINAL = b"MDPW02", b"\x01", b"\x02", b"\x04"
# the broker's habits: compiled backend methods, plain-int flags, Frame ``more`` flags
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
SNDMORE, NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)
FIRST = SNDMORE | NOBLOCK


def recv_message(sock: zmq.Socket) -> list | None:
    """The next waiting message as ``zmq.Frame`` objects, or None."""
    try:
        frame = _recv(sock, NOBLOCK, False)
    except zmq.Again:
        return None
    frames = [frame]
    while frame.more:
        frame = _recv(sock, 0, False)
        frames.append(frame)
    return frames


def serve(frontend_url: str, backend_url: str) -> None:
    ctx = zmq.Context()
    frontend = ctx.socket(zmq.ROUTER)
    backend = ctx.socket(zmq.ROUTER)
    for sock in (frontend, backend):
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.LINGER, 0)
    frontend.bind(frontend_url)
    backend.bind(backend_url)
    poller = zmq.Poller()
    poller.register(frontend, zmq.POLLIN)
    poller.register(backend, zmq.POLLIN)
    workers: list[bytes] = []
    service = b""
    turn = 0
    print("forwarder ready", flush=True)
    while True:
        events = dict(poller.poll(1000))
        if backend in events:
            while (frames := recv_message(backend)) is not None:
                command = frames[2].bytes
                if command == W_FINAL:  # [worker, MDPW02, FINAL, client, "", body...]
                    _send(frontend, frames[3], FIRST, False)
                    _send(frontend, C_HDR, SNDMORE)
                    _send(frontend, C_FINAL, SNDMORE)
                    _send(frontend, service, SNDMORE)
                    last = len(frames) - 1
                    for i in range(5, last):
                        _send(frontend, frames[i], SNDMORE, False)
                    _send(frontend, frames[last], 0, False)
                elif command == W_READY:
                    workers.append(frames[0].bytes)
                    service = frames[3].bytes
        if frontend in events and workers:
            while (frames := recv_message(frontend)) is not None:
                turn = (turn + 1) % len(workers)  # [client, MDPC02, REQUEST, service, body...]
                _send(backend, workers[turn], FIRST)
                _send(backend, W_HDR, SNDMORE)
                _send(backend, W_REQUEST, SNDMORE)
                _send(backend, frames[0], SNDMORE, False)
                _send(backend, b"", SNDMORE)
                last = len(frames) - 1
                for i in range(4, last):
                    _send(backend, frames[i], SNDMORE, False)
                _send(backend, frames[last], 0, False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontend", required=True)
    parser.add_argument("--backend", required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.frontend, args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
