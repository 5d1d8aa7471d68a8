"""One ``send`` per HTTP response instead of two: a response's head waits for its body.

An ASGI response is two messages, ``http.response.start`` (status and headers) and
``http.response.body``, and uvicorn writes each to the socket as it comes: two system
calls, two TCP segments and two wake-ups of the client for every answer. Profiled under
load (8 connections, 2 processes), those two writes were the largest single item of the
frontend's CPU (about a fifth of the time the event loop held the GIL); on loopback a
send also pays for the receiving side's TCP processing.

:class:`CoalescingTransport` stands between uvicorn's protocol and the real transport.
It holds a write that finds nothing held (a response's head) and sends it together with
the next write (its body) in one call of the real transport, at once: Falcon sends a
response's head and body in the same task step, so they leave in one ``send`` with no
extra turn of the loop. A write that no second one follows in the same callback (a
``100 Continue``, the head of a response whose body is still coming) is sent at the start
of the loop's next turn (``loop.call_soon``). It is written against asyncio's public
``Transport`` interface only: every other call is passed through, after the held bytes
where order matters (``close``, ``write_eof``).

An earlier version held every write until the next turn; measured side by side it halved
the kernel's TCP send work but the deferred write cost as much. This one sends in the
same turn: one system call where uvicorn makes two, for one no-op callback. py-spy on a
frontend process under load puts the response's send at 17 % of the loop thread's time
with it against 33 % without (two runs at different load: a hint, not a measurement).
With ``tests/benchmarks/bench_http.py --variant`` (8 connections, 2 processes, rotating
bodies, a shared 2-core machine at load 5-19), four runs of 5 interleaved repeats gave
the frontend's CPU per classify with it x0.96, x0.94, x1.06 and x1.05 of without it
(medians of the repeats' own ratios): no gain shown, so it stays off by default
(``MOLE_COALESCE_WRITES=on``). Measure on a quiet machine before switching it on.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport(asyncio.Transport):
    """A transport that sends a held write together with the one after it."""

    __slots__ = ("_loop", "_parts", "_real")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._real = real
        self._loop = loop
        self._parts: list[bytes | bytearray | memoryview] = []

    # writing ------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        parts = self._parts
        if parts:  # a head is held: it leaves now, with this
            self._parts = []
            parts.append(data)
            if not self._real.is_closing():
                self._real.write(b"".join(parts))
            return
        self._loop.call_soon(self.flush)  # nothing follows in this callback: sent then
        parts.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Hand the gathered bytes to the real transport now (does nothing if none)."""
        parts = self._parts
        if not parts:
            return
        self._parts = []
        if self._real.is_closing():
            return  # the peer went away; asyncio drops writes to a closing transport too
        self._real.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def get_write_buffer_size(self) -> int:
        return self._real.get_write_buffer_size() + sum(len(p) for p in self._parts)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._real.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._real.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._real.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._real.write_eof()

    # closing ------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._real.is_closing()

    def close(self) -> None:
        self.flush()  # what was written goes out before the connection is closed
        self._real.close()

    def abort(self) -> None:
        self._parts = []
        self._real.abort()

    # passed through -----------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._real.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._real.pause_reading()

    def resume_reading(self) -> None:
        self._real.resume_reading()

    def is_reading(self) -> bool:
        return self._real.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._real.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._real.get_protocol()
