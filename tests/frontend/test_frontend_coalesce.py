"""CoalescingTransport on a real event loop and a real connected socket pair: a held write
reaches the peer together with the next one, at once, or alone on the loop's next turn,
in order, and nothing written is lost to ``close``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from mole.frontend.coalesce import CoalescingTransport


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[CoalescingTransport, socket.socket]]:
    """A CoalescingTransport over a real socket transport, and the peer's plain socket."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    real, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    try:
        yield CoalescingTransport(real, loop), peer
    finally:
        real.close()
        peer.close()


def received_now(peer: socket.socket) -> bytes:
    """What the peer can read at this moment, without waiting."""
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b""


async def read_until_eof(peer: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while chunk := await loop.sock_recv(peer, 65536):
        data += chunk
    return data


def test_a_head_waits_for_its_body_and_both_leave_in_the_same_turn() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"

    async def main() -> None:
        async with connected() as (transport, peer):
            transport.write(head)
            assert received_now(peer) == b""  # held for its body
            assert transport.get_write_buffer_size() == len(head)
            transport.write(memoryview(b"{}"))
            # no await in between: the pair went to the socket within this callback
            assert received_now(peer) == head + b"{}"
            assert transport.get_write_buffer_size() == 0
            transport.writelines([b"a", b"", b"b"])
            assert received_now(peer) == b"ab"

    asyncio.run(main())


def test_a_write_with_nothing_after_it_leaves_on_the_next_turn() -> None:
    async def main() -> None:
        async with connected() as (transport, peer):
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            assert received_now(peer) == b""
            await asyncio.sleep(0)  # the loop's next turn
            await asyncio.sleep(0.05)  # let the kernel deliver it
            assert received_now(peer) == b"HTTP/1.1 100 Continue\r\n\r\n"
            transport.write(b"x")  # a new head: held again, then sent alone
            transport.flush()
            assert received_now(peer) == b"x"

    asyncio.run(main())


def test_close_sends_what_was_written_first() -> None:
    async def main() -> None:
        async with connected() as (transport, peer):
            transport.write(b"last words")
            transport.close()
            assert transport.is_closing()
            assert await asyncio.wait_for(read_until_eof(peer), 5) == b"last words"

    asyncio.run(main())


def test_abort_drops_what_was_held() -> None:
    async def main() -> None:
        async with connected() as (transport, peer):
            transport.write(b"never sent")
            transport.abort()
            assert await asyncio.wait_for(read_until_eof(peer), 5) == b""

    asyncio.run(main())


@pytest.mark.parametrize("name", ["peername", "sockname", "socket"])
def test_extra_info_is_the_real_transports(name: str) -> None:
    async def main() -> None:
        async with connected() as (transport, _peer):
            assert transport.get_extra_info(name) is not None
            assert transport.get_extra_info("no such thing", "dflt") == "dflt"
            assert transport.is_reading()
            transport.pause_reading()
            assert not transport.is_reading()
            transport.resume_reading()
            assert transport.is_reading()

    asyncio.run(main())
