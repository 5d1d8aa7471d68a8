"""DeadlineHeap on a real event loop: requests expire in deadline order, answered ones are
skipped, the heap stays about as large as the requests in flight, close() stops it."""

from __future__ import annotations

import asyncio

from mole.protocol._deadlines import DeadlineHeap
from mole.protocol._pending import Pending


class Sink:
    def on_partial(self, body: list[bytes]) -> None: ...

    def on_final(self, body: list[bytes]) -> None: ...

    def on_error(self, error: BaseException) -> None: ...


def pending(name: str) -> Pending:
    return Pending(name, "svc", b"svc", [], 1.0, 0.0, 0.0, Sink())


class Table:
    """The client's pending table, reduced to what the heap asks of it."""

    def __init__(self) -> None:
        self.live: dict[str, Pending] = {}
        self.expired: list[str] = []
        self.all_expired = asyncio.Event()
        self.expect = 0

    def add(self, p: Pending) -> Pending:
        self.live[p.request_id] = p
        return p

    def expire(self, p: Pending) -> None:
        self.expired.append(self.live.pop(p.request_id).request_id)
        if len(self.expired) == self.expect:
            self.all_expired.set()

    def is_live(self, p: Pending) -> bool:
        return self.live.get(p.request_id) is p

    def count(self) -> int:
        return len(self.live)


def heap_for(table: Table) -> DeadlineHeap:
    return DeadlineHeap(asyncio.get_running_loop(), table.expire, table.is_live, table.count)


def test_requests_expire_in_deadline_order_and_answered_ones_are_skipped() -> None:
    async def main() -> None:
        table = Table()
        heap = heap_for(table)
        now = asyncio.get_running_loop().time()
        for name, after in (("late", 0.06), ("first", 0.01), ("answered", 0.02), ("mid", 0.03)):
            heap.watch(table.add(pending(name)), now + after)
        del table.live["answered"]  # its answer came: it must not expire
        table.expect = 3
        await asyncio.wait_for(table.all_expired.wait(), 10)
        assert table.expired == ["first", "mid", "late"]
        assert len(heap) == 0

    asyncio.run(main())


def test_a_request_with_an_earlier_deadline_rearms_the_timer() -> None:
    async def main() -> None:
        table = Table()
        heap = heap_for(table)
        now = asyncio.get_running_loop().time()
        heap.watch(table.add(pending("far")), now + 3600)
        heap.watch(table.add(pending("near")), now + 0.01)
        table.expect = 1
        await asyncio.wait_for(table.all_expired.wait(), 10)
        assert table.expired == ["near"]
        assert list(table.live) == ["far"]
        heap.close()

    asyncio.run(main())


def test_answered_entries_do_not_pile_up() -> None:
    async def main() -> None:
        table = Table()
        heap = heap_for(table)
        later = asyncio.get_running_loop().time() + 3600
        for i in range(10_000):
            p = table.add(pending(f"r{i}"))
            heap.watch(p, later)
            if i % 1000:  # all but every thousandth are answered at once
                del table.live[p.request_id]
        assert len(table.live) == 10
        assert len(heap) <= 2 * 10 + 1024 + 1
        heap.close()
        assert len(heap) == 0

    asyncio.run(main())


def test_close_stops_every_expiry() -> None:
    async def main() -> None:
        table = Table()
        heap = heap_for(table)
        heap.watch(table.add(pending("x")), asyncio.get_running_loop().time() + 0.01)
        heap.close()
        await asyncio.sleep(0.05)  # well past its time: nothing may fire
        assert table.expired == []

    asyncio.run(main())
