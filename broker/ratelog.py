"""A rate-limited logger for things a peer can make the broker say over and over.

A misbehaving or hostile peer can send thousands of malformed messages a second; logging
each one would turn the broker's log (and its CPU) into the attack's amplifier. This lets
``burst`` messages through per ``period`` seconds and then one summary of how many were
suppressed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """Log at most ``burst`` records per ``period`` seconds; count and report the rest."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        period: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._period = period
        self._clock = clock
        self._window_start = clock()
        self._count = 0
        self._suppressed = 0

    def log(self, level: int, msg: str, *args: object) -> None:
        now = self._clock()
        if now - self._window_start >= self._period:
            if self._suppressed:
                self._logger.log(
                    level,
                    "%d similar messages suppressed in the last %.0f s",
                    self._suppressed,
                    now - self._window_start,
                )
            self._window_start = now
            self._count = 0
            self._suppressed = 0
        if self._count < self._burst:
            self._count += 1
            self._logger.log(level, msg, *args)
        else:
            self._suppressed += 1
