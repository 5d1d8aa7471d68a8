"""Client-side deadlines of many requests on one event loop, with one timer for all of them.

The asyncio client used to arm a timer per request (``loop.call_at``) and cancel it when
the answer came. Under uvloop every such timer is a libuv handle that is made, started,
stopped and closed (the close finishing on a later turn of the loop): a few microseconds
per request, for a timer that almost never fires. Here requests go into a heap ordered by
expiry and one timer is armed for the earliest; an answered request is not looked for in
the heap (that would cost as much as the timer did): its entry is skipped when its time
comes, and the heap is rebuilt from the requests still waiting whenever answered entries
outnumber them, so it stays about as large as the number in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from mole.protocol._pending import Pending

#: Answered entries a heap may hold beyond twice the live ones before it is rebuilt.
_SLACK = 1024


class DeadlineHeap:
    """Calls ``expire(pending)`` at each watched request's time, if ``is_live`` still
    says it is waiting then. Use it from the loop's thread only."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        expire: Callable[[Pending], None],
        is_live: Callable[[Pending], bool],
        live_count: Callable[[], int],
    ) -> None:
        self._loop = loop
        self._expire = expire
        self._is_live = is_live
        self._live_count = live_count
        self._heap: list[tuple[float, int, Pending]] = []
        self._order = itertools.count()  # ties broken by arrival; Pending is not ordered
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0

    def __len__(self) -> int:
        return len(self._heap)

    def watch(self, pending: Pending, when: float) -> None:
        """Expire ``pending`` at loop time ``when`` unless it is answered first."""
        heap = self._heap
        heapq.heappush(heap, (when, next(self._order), pending))
        if len(heap) > 2 * self._live_count() + _SLACK:
            self._heap = heap = [entry for entry in heap if self._is_live(entry[2])]
            heapq.heapify(heap)
        if self._timer is None or when < self._armed_at:
            self._arm(when)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap = []

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._sweep)
        self._armed_at = when

    def _sweep(self) -> None:
        self._timer = None
        heap = self._heap
        now = self._loop.time()
        while heap and heap[0][0] <= now:
            pending = heapq.heappop(heap)[2]
            if self._is_live(pending):
                self._expire(pending)
        if heap:
            self._arm(heap[0][0])
