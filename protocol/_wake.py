"""Wake a thread that is blocked in ``zmq.Poller.poll`` from any other thread.

ZeroMQ sockets are not thread-safe, so the thread that owns a socket is the only one
that may send on it. Other threads put their work on a queue and then call
:meth:`Waker.wake`, which sends one empty message over an inproc PAIR socket that the
owner polls next to its network socket. A flag keeps a burst of wake-ups down to one
message; the owner clears it in :meth:`Waker.drain` *before* it empties its queue, so an
item queued after the drain always causes another wake-up and none is ever missed.
"""

from __future__ import annotations

import itertools
import threading

import zmq

_names = itertools.count(1)


class Waker:
    """An inproc PAIR pair: ``wake()`` from any thread, poll ``socket`` in the owner."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        address = f"inproc://mole-wake-{id(self):x}-{next(_names)}"
        self.socket = context.socket(zmq.PAIR)  # polled and drained by the owner thread
        self.socket.linger = 0
        self.socket.bind(address)
        self._sender = context.socket(zmq.PAIR)
        self._sender.linger = 0
        self._sender.connect(address)
        self._lock = threading.Lock()
        self._armed = False
        self._closed = False

    def wake(self) -> None:
        """Make the owner's next poll return. Cheap when a wake-up is already pending."""
        if self._armed:
            return
        with self._lock:
            if self._armed or self._closed:
                return
            self._armed = True
            # NOTE: try/except, not contextlib.suppress: this runs once per wake-up on the
            # client's hot path, where a context manager's calls cost more than the send
            try:  # noqa: SIM105
                self._sender.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:  # full (cannot be: one message at a time) or closed
                pass

    def drain(self) -> None:
        """Owner thread: consume the wake-up messages, then re-arm."""
        while True:
            try:
                self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        self._armed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._sender.close(0)
        self.socket.close(0)
