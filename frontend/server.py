"""The server side of slow and abusive clients: gunicorn's uvicorn worker, configured.

:class:`MoleUvicornWorker` is ``uvicorn_worker.UvicornWorker`` with its documented
extension point, ``CONFIG_KWARGS``, filled from the frontend settings: the HTTP protocol
below, the keep-alive idle limit, no proxy headers (a client must not choose its own
address for the per-address limits), no uvicorn access log (ours leaves the query string
out, see ``frontend.middleware``).

:class:`GuardedHttpToolsProtocol` is uvicorn's httptools protocol with what uvicorn does
not do itself, written only against public interfaces (asyncio's ``Protocol`` methods
and httptools' parser callbacks, each calling uvicorn's own):

* a request head (request line and headers) must arrive within ``header_timeout_s`` of
  the connection opening, or of the first read that brought part of it on a kept-alive
  connection (idle time between requests is uvicorn's keep-alive limit); a connection
  that sent part of a head then gets ``408 header_timeout`` and is closed, one that sent
  nothing is closed;
* a head of more than ``max_header_bytes`` is refused with ``431 headers_too_large``
  before the parser sees the rest of it;
* it counts this process's open connections for the connection cap
  (``frontend.guard``);
* with ``MOLE_COALESCE_WRITES`` on (off by default) it gives uvicorn a
  :class:`~frontend.coalesce.CoalescingTransport`, so a response's head and body leave
  in one ``send``.

Body timeouts and sizes are the app's (``frontend.media``): by then a request exists to
answer. Each connection costs a protocol object and a socket, not a thread, so a
thousand slow clients leave the loop free for everyone else.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from mole.frontend.coalesce import CoalescingTransport
from mole.frontend.errors import error_json, status_line
from mole.frontend.guard import PROCESS_CONNECTIONS, ConnectionGauge
from mole.frontend.settings import Settings, settings_from_env

_HEAD_END = b"\r\n\r\n"


def raw_error(code: str, detail: str) -> bytes:
    """A whole HTTP/1.1 error response in the documented shape, closing the connection."""
    body: bytes = error_json(code, detail)
    head = (
        f"HTTP/1.1 {status_line(code)}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head timeout, a head size cap and a
    connection count (see the module's docstring)."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    gauge: ConnectionGauge = PROCESS_CONNECTIONS
    coalesce_writes: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.gauge.open += 1
        if self.coalesce_writes:
            transport = CoalescingTransport(transport, asyncio.get_running_loop())
        # the same transport as uvicorn's, so a refusal leaves after what uvicorn wrote
        self._mole_transport = transport
        self._mole_head_bytes = 0
        self._mole_tail = b""
        self._mole_awaiting_head = True
        self._mole_timer: asyncio.TimerHandle | None = None
        self._mole_arm_head_timer()
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gauge.open -= 1
        self._mole_disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._mole_awaiting_head:
            super().data_received(data)
            return
        if self._mole_head_over_limit(data):
            self._mole_refuse(
                "headers_too_large",
                f"the request line and headers are over {self.max_header_bytes} bytes",
            )
            return
        super().data_received(data)
        # NOTE: the clock starts only for a head that did not arrive in one read, so the
        # usual request (its head in one packet) costs no timer
        if self._mole_awaiting_head and self._mole_timer is None and self._mole_started_head():
            self._mole_arm_head_timer()

    # httptools parser callbacks -----------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._mole_awaiting_head = False
        self._mole_disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # the next bytes on this connection begin a new head (counted from zero)
        self._mole_awaiting_head = True
        self._mole_head_bytes = 0
        self._mole_tail = b""
        super().on_message_complete()

    # ours ---------------------------------------------------------------------------------

    def _mole_started_head(self) -> bool:
        return bool(self._mole_head_bytes or self._mole_tail)

    def _mole_head_over_limit(self, data: bytes) -> bool:
        """Whether the head being received passes the limit with ``data``: the head ends
        at the first blank line, which may straddle two reads."""
        window = self._mole_tail + data
        end = window.find(_HEAD_END)
        if end >= 0:
            size = self._mole_head_bytes + end + len(_HEAD_END) - len(self._mole_tail)
            return size > self.max_header_bytes
        self._mole_head_bytes += len(data)
        self._mole_tail = window[-(len(_HEAD_END) - 1) :]
        return self._mole_head_bytes > self.max_header_bytes

    def _mole_arm_head_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._mole_timer = loop.call_later(self.header_timeout_s, self._mole_head_timed_out)

    def _mole_disarm(self) -> None:
        if self._mole_timer is not None:
            self._mole_timer.cancel()
            self._mole_timer = None

    def _mole_head_timed_out(self) -> None:
        self._mole_timer = None
        if not self._mole_awaiting_head or self._mole_transport.is_closing():
            return
        if self._mole_started_head():
            self._mole_refuse(
                "header_timeout",
                f"the request line and headers did not arrive within "
                f"{self.header_timeout_s:g} s; send them at once",
            )
        else:
            self._mole_transport.close()

    def _mole_refuse(self, code: str, detail: str) -> None:
        self._mole_awaiting_head = False
        self._mole_disarm()
        transport = self._mole_transport
        if not transport.is_closing():
            transport.write(raw_error(code, detail))
            transport.close()


def guarded_protocol(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class with this deployment's limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "max_header_bytes": settings.max_header_bytes,
            "coalesce_writes": settings.coalesce_writes,
        },
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn ``Config`` arguments for the frontend (``CONFIG_KWARGS``)."""
    return {
        "loop": settings.event_loop,  # "auto": uvloop when installed
        "http": guarded_protocol(settings),
        "timeout_keep_alive": settings.keepalive_s,
        "proxy_headers": False,
        "server_header": False,
        "access_log": False,
        "lifespan": "on",
    }


class MoleUvicornWorker(UvicornWorker):  # type: ignore[misc]  # uvicorn_worker is untyped
    """gunicorn worker class: uvicorn with the frontend's protocol and limits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # CONFIG_KWARGS is the extension point uvicorn documents for this worker; it is
        # read in the base __init__, so it is set (per instance) before that runs
        self.CONFIG_KWARGS = uvicorn_options(settings_from_env())
        super().__init__(*args, **kwargs)
