"""One ``send`` per HTTP response instead of two: writes gathered until the loop's next turn.

An ASGI response is two messages, ``http.response.start`` (status and headers) and
``http.response.body``, and uvicorn writes each to the socket as it comes: two system
calls, two TCP segments and two wake-ups of the client for every answer. Profiled under
load (8 connections, 2 processes), those two writes were the largest single item of the
frontend's CPU (about a fifth of the time the event loop held the GIL); on loopback a
send also pays for the receiving side's TCP processing.

:class:`CoalescingTransport` stands between uvicorn's protocol and the real transport and
keeps what is written during one callback of the event loop, handing it to the real
transport in one piece at the start of the next turn (``loop.call_soon``). Falcon sends
a response's head and body in the same task step, so they leave in one ``send``. It is
written against asyncio's public ``Transport`` interface only: every other call is passed
through, after the gathered bytes where order matters (``close``, ``write_eof``).

Off by default (``MOLE_COALESCE_WRITES``): measured side by side with
``tests/benchmarks/bench_http.py --variant`` (8 connections, 2 processes, on a shared
2-core machine), the kernel's TCP send work in the frontend halved, but the extra turn of
the loop cost about as much, and the frontend's CPU per request did not go down (within
the run-to-run spread of about 15 %, several runs slightly up). It stays for deployments
whose clients sit across a real network, where one segment instead of two may be worth
it: measure there before switching it on.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport(asyncio.Transport):
    """A transport that writes what it is given in one piece, one loop turn later."""

    __slots__ = ("_loop", "_parts", "_real")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._real = real
        self._loop = loop
        self._parts: list[bytes] = []

    # writing ------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._parts:
            self._loop.call_soon(self.flush)
        self._parts.append(bytes(data))

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
