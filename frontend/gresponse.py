"""gunicorn's HTTP/1 response, sending the status line and headers with the first body bytes.

gunicorn writes a response's head and its body with two ``sendall`` calls: two system
calls and two TCP segments per response, and the client is woken for a head it cannot use
yet. A JSON API answers with one small body, so here the head waits (in
:class:`HeldHeadSocket`) and goes out in the same ``sendall`` as the first body bytes, or
on its own when the response ends without a body. Chunked bodies and ``sendfile`` work as
before: the head is sent first whatever the path.

Installed in each worker process by :class:`frontend.gworker.KeepAliveThreadWorker`.
"""

from __future__ import annotations

import time
from typing import Any

from gunicorn import util
from gunicorn.http import wsgi

_format_http_date = util.http_date
_date_of_second: tuple[int, str] = (0, "")


class HeldHeadSocket:
    """A socket whose next ``sendall`` carries a held response head in front of its data."""

    __slots__ = ("_head", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._head = b""

    def hold(self, head: bytes) -> None:
        self._head += head

    def flush(self) -> None:
        """Send the held head now (the response has no body, or streams a file)."""
        head, self._head = self._head, b""
        if head:
            self._sock.sendall(head)

    def sendall(self, data: bytes) -> None:
        head, self._head = self._head, b""
        self._sock.sendall(head + data if head else data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class CoalescedResponse(wsgi.Response):
    """:class:`gunicorn.http.wsgi.Response` with its head sent together with the body."""

    def __init__(self, req: Any, sock: Any, cfg: Any, *args: Any) -> None:
        super().__init__(req, HeldHeadSocket(sock), cfg, *args)

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        lines.append("\r\n")
        self.sock.hold("".join(lines).encode("latin-1"))
        self.headers_sent = True

    def sendfile(self, respiter: Any) -> bool:
        self.send_headers()
        self.sock.flush()
        return super().sendfile(respiter)

    def close(self) -> None:
        if not self.headers_sent:
            self.send_headers()
        self.sock.flush()
        super().close()


def http_date(timestamp: float | None = None) -> str:
    """gunicorn's ``util.http_date``, formatted once per second for the current time.

    The Date header has a resolution of one second (RFC 9110, 5.6.7), and formatting it
    through ``email.utils`` cost 2.4 us per response here.
    """
    global _date_of_second
    if timestamp is not None:
        return _format_http_date(timestamp)
    now = int(time.time())
    second, text = _date_of_second
    if second != now:
        text = _format_http_date(now)
        _date_of_second = (now, text)  # one tuple: threads see the old pair or the new one
    return text


def install() -> None:
    """Make gunicorn build HTTP/1 responses as :class:`CoalescedResponse` in this process,
    with the Date header from :func:`http_date`."""
    wsgi.Response = CoalescedResponse
    util.http_date = http_date
