"""BodyWatch: body reads bounded in time by one loop timer, on a real event loop.

The reads are real futures that a test completes, or never completes, by hand; the
deadlines are short (tens of milliseconds) so the watch's timer really fires. Nothing
here asserts how long anything took: only which reads ended in TimeoutError, which ended
with their value, and how many timers the loop holds.
"""

from __future__ import annotations

import asyncio

import pytest

from mole.frontend.body_watch import BodyWatch, body_watch, within

SHORT = 0.02


def run(coro):
    return asyncio.run(coro)


def test_a_read_that_completes_returns_its_value_and_leaves_no_read_behind():
    async def main():
        watch = body_watch(30.0)
        value = await watch.run(asyncio.sleep(0, b"body"))
        return value, watch.in_progress

    assert run(main()) == (b"body", 0)


def test_a_read_that_never_completes_ends_in_timeout_error():
    async def main():
        never = asyncio.get_running_loop().create_future()
        with pytest.raises(TimeoutError):
            await within(SHORT, never)
        return never.cancelled(), body_watch(SHORT).in_progress

    assert run(main()) == (True, 0)


def test_the_task_goes_on_normally_after_its_read_timed_out():
    """The cancellation is spent on the read: the next await of the task is not hit."""

    async def main():
        never = asyncio.get_running_loop().create_future()
        with pytest.raises(TimeoutError):
            await within(SHORT, never)
        await asyncio.sleep(SHORT * 2)  # would raise CancelledError if one were pending
        return asyncio.current_task().cancelling()

    assert run(main()) == 0


def test_only_the_reads_past_their_deadline_are_cancelled():
    """A dribbling read times out among quick ones that came before and after it; the
    watch re-arms for reads that started after the first deadline."""

    async def main():
        loop = asyncio.get_running_loop()
        watch = BodyWatch(loop, SHORT)
        quick = await watch.run(asyncio.sleep(0, "quick"))
        slow = loop.create_future()
        slow_read = asyncio.ensure_future(watch.run(slow))
        await asyncio.sleep(SHORT / 2)
        late = loop.create_future()  # starts half-way: its deadline is later
        late_read = asyncio.ensure_future(watch.run(late))
        await asyncio.sleep(0)
        with pytest.raises(TimeoutError):
            await slow_read
        assert not late_read.done()  # its own deadline has not come yet
        late.set_result("late")
        return quick, await late_read, watch.in_progress

    assert run(main()) == ("quick", "late", 0)


def test_a_second_dribbler_after_a_quiet_spell_still_times_out():
    async def main():
        loop = asyncio.get_running_loop()
        watch = BodyWatch(loop, SHORT)
        with pytest.raises(TimeoutError):
            await watch.run(loop.create_future())
        await asyncio.sleep(SHORT * 2)  # the timer has nothing left to watch
        with pytest.raises(TimeoutError):
            await watch.run(loop.create_future())
        return watch.in_progress

    assert run(main()) == 0


def test_a_cancellation_from_elsewhere_stays_a_cancellation():
    async def main():
        loop = asyncio.get_running_loop()
        watch = BodyWatch(loop, 30.0)
        reader = asyncio.ensure_future(watch.run(loop.create_future()))
        await asyncio.sleep(0)
        reader.cancel()  # a shutdown, say
        with pytest.raises(asyncio.CancelledError):
            await reader
        return watch.in_progress

    assert run(main()) == 0


def test_many_reads_at_once_each_end_their_own_way():
    async def main():
        loop = asyncio.get_running_loop()
        watch = BodyWatch(loop, SHORT)
        pending = [loop.create_future() for _ in range(100)]
        reads = [asyncio.ensure_future(watch.run(f)) for f in pending]
        await asyncio.sleep(0)
        for n, f in enumerate(pending):
            if n % 2 == 0:  # the even ones arrive, the odd ones never do
                f.set_result(n)
        outcomes = await asyncio.gather(*reads, return_exceptions=True)
        return outcomes, watch.in_progress

    outcomes, left = run(main())
    assert outcomes[0::2] == list(range(0, 100, 2))
    assert all(isinstance(o, TimeoutError) for o in outcomes[1::2])
    assert left == 0


def test_a_watch_needs_a_positive_timeout():
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="positive"):
            BodyWatch(loop, 0)
    finally:
        loop.close()
