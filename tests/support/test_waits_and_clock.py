"""The shared waits (tests.support.procs) and the hand-moved clock (tests.support.clock):
what every other test leans on to wait for a condition and to control time."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.support.clock import FakeClock
from tests.support.procs import must_wait, must_wait_async, wait_until


def test_must_wait_returns_the_first_true_value():
    calls = itertools.count(1)
    assert must_wait(lambda: (n := next(calls)) >= 3 and f"call {n}", "the third call") == (
        "call 3"
    )


def test_must_wait_names_what_it_waited_for_and_the_last_error():
    def broken() -> bool:
        raise ConnectionRefusedError("nobody listens")

    with pytest.raises(AssertionError, match="waiting for the peer") as failure:
        must_wait(broken, "the peer", timeout=0.05, interval=0.01)
    assert "ConnectionRefusedError('nobody listens')" in str(failure.value)


def test_wait_until_gives_none_where_must_wait_fails():
    assert wait_until(lambda: 0, timeout=0.05, interval=0.01) is None
    with pytest.raises(AssertionError, match=r"timed out after 0\.05 s waiting for zero"):
        must_wait(lambda: 0, "zero", timeout=0.05, interval=0.01)


def test_must_wait_async_lets_the_loop_run_while_it_waits():
    async def main() -> str:
        done: list[str] = []

        async def later() -> None:
            await asyncio.sleep(0)
            done.append("ran")

        task = asyncio.create_task(later())
        value = await must_wait_async(lambda: done and done[0], "the other task")
        await task
        return value

    assert asyncio.run(main()) == "ran"


def test_fake_clock_moves_only_when_told_and_tells_its_listeners():
    clock = FakeClock(1000.0)
    told: list[float] = []
    clock.on_advance(lambda: told.append(clock()))
    assert clock() == clock() == 1000.0
    assert clock.advance(0.25) == 1000.25
    assert clock.advance(0.5) == 1000.75
    assert told == [1000.25, 1000.75]
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)
    assert clock() == 1000.75
