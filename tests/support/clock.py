"""A clock a test moves by hand, for code that takes an injected ``clock`` callable.

Unit tests never measure time: they pass this clock in, move it with :meth:`advance`, and
assert what the code did at exactly those instants (a heartbeat at t0 + interval, a
deadline that passed). Code that waits in a poll computed from the clock is told to look
again through the callbacks registered with :meth:`on_advance`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class FakeClock:
    """Monotonic seconds that change only when the test calls :meth:`advance`.

    Start it and step it by binary fractions (0.25, 0.5) so sums stay exact and a schedule
    compares with ``==``. Thread-safe: the code under test reads it from its own threads.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], object]] = []

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds``, tell every listener, return the new time."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock does not go back ({seconds} s)")
        with self._lock:
            self._now += seconds
            now = self._now
        for listener in list(self._listeners):
            listener()
        return now

    def on_advance(self, listener: Callable[[], object]) -> None:
        """Call ``listener`` after every :meth:`advance` (e.g. a runtime's ``wake``)."""
        self._listeners.append(listener)
