"""The native connection's heartbeats on a fake clock: PINGs at each interval, a peer
silent for the timeout taken as lost, and a stalled loop not mistaken for a silent peer.

The connection uses only ``time()`` and ``call_later()`` of its loop, so a fake loop
drives it here at exact instants; the peer's bytes are spelled out from spec 37.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from mole.protocol.zmtp_connection import ZmtpConnection
from mole.protocol.zmtp_mechanism import NullMechanism

GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"NULL" + bytes(16) + bytes(32)
READY = bytes([0x04, 28, 5]) + b"READY" + bytes([11]) + b"Socket-Type" + bytes([0, 0, 0, 6])
READY += b"ROUTER"
PING = bytes([0x04, 7, 4]) + b"PING" + b"\x00\x00"
PONG = bytes([0x04, 5, 4]) + b"PONG"


class FakeLoop:
    """``time()`` and ``call_later()``, advanced by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, Handle]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle:
        handle = Handle(callback)
        heapq.heappush(self._timers, (self.now + delay, next(self._order), handle))
        return handle

    def advance(self, to: float) -> None:
        """Jump to ``to`` and run every timer due by then, in order, all at ``to``: late,
        as after a stall of the loop (:meth:`step` keeps them on time)."""
        self.now = to
        while self._timers and self._timers[0][0] <= to:
            _, _, handle = heapq.heappop(self._timers)
            if not handle.cancelled:
                handle.callback()

    def step(self, to: float, every: float) -> None:
        """Advance to ``to`` in steps of ``every`` (the loop turning normally)."""
        while self.now + every <= to + 1e-9:
            self.advance(round(self.now + every, 9))


class Handle:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Wire:
    """The transport: what the connection wrote, and whether it hung up."""

    def __init__(self) -> None:
        self.written = b""
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True


class Owner:
    def __init__(self) -> None:
        self.ready = 0
        self.ended: list[BaseException | None] = []

    def connection_ready(self, connection: ZmtpConnection) -> None:
        self.ready += 1

    def message_received(self, frames: list[bytes]) -> None:
        pass

    def connection_ended(self, connection: ZmtpConnection, reason: BaseException | None) -> None:
        self.ended.append(reason)


def connected(interval: float = 1.0, timeout: float = 3.0):
    loop, wire, owner = FakeLoop(), Wire(), Owner()
    connection = ZmtpConnection(
        owner,
        NullMechanism(b"c-clock", "tcp://peer:1"),
        "tcp://peer:1",
        loop,  # type: ignore[arg-type]
        heartbeat_interval=interval,
        heartbeat_timeout=timeout,
        max_message_bytes=1 << 20,
    )
    connection.connection_made(wire)  # type: ignore[arg-type]
    connection.data_received(GREETING + READY)
    assert owner.ready == 1
    wire.written = b""
    return loop, wire, owner, connection


def test_pings_at_each_interval_while_the_peer_answers():
    loop, wire, _owner, connection = connected()
    for second in range(1, 11):
        loop.step(second, 0.01)
        assert wire.written == PING * second
        connection.data_received(PONG)
    assert not wire.aborted


def test_a_silent_peer_is_lost_at_the_first_tick_past_the_timeout():
    loop, wire, owner, connection = connected()
    loop.step(2.5, 0.01)
    assert not wire.aborted
    loop.step(3.0, 0.01)  # silent since the handshake at 0: 3 s = the timeout
    assert wire.aborted
    connection.connection_lost(None)
    assert "no traffic from the broker at tcp://peer:1 for 3.0 s" in str(owner.ended[0])
    assert wire.written == PING * 2  # at 1 s and 2 s; the third tick judged instead


def test_a_stalled_loop_is_not_mistaken_for_a_silent_peer():
    loop, wire, _owner, connection = connected()
    loop.step(1.0, 0.01)  # tick at 1 s: PING sent
    connection.data_received(PONG)
    loop.step(2.0, 0.01)  # tick at 2 s: PING sent; its PONG is on the wire, unread...
    loop.advance(6.0)  # ...when the loop stalls for 4 s (> the 3 s timeout)
    assert not wire.aborted  # the late tick does not judge
    connection.data_received(PONG)  # the loop reads what came meanwhile
    loop.step(9.0, 0.01)
    assert not wire.aborted
    loop.step(12.0, 0.01)  # and a peer that then falls silent is still found out
    assert wire.aborted
