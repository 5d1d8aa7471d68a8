"""CoalescedResponse on a real socket pair and gunicorn's own request parser: the head
leaves in the same write as the body, and the bytes on the wire are a valid response."""

from __future__ import annotations

import socket

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from mole.frontend.gresponse import CoalescedResponse


class CountingSocket:
    """The real socket, with each sendall's bytes noted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


@pytest.fixture
def exchange():
    server, client = socket.socketpair()
    client.sendall(b"GET /api HTTP/1.1\r\nHost: test\r\n\r\n")
    cfg = Config()
    request = next(iter(RequestParser(cfg, server, ("127.0.0.1", 40000))))
    counting = CountingSocket(server)
    yield CoalescedResponse(request, counting, cfg), counting, client
    server.close()
    client.close()


def _read(client: socket.socket, size: int) -> bytes:
    data = b""
    client.settimeout(2)
    while len(data) < size:
        data += client.recv(65536)
    return data


def test_head_and_body_go_out_in_one_write(exchange):
    response, counting, client = exchange
    response.start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", "11")]
    )
    response.write(b'{"ok":true}')
    response.close()
    assert len(counting.writes) == 1
    wire = counting.writes[0]
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n")
    assert wire.endswith(b'\r\n\r\n{"ok":true}')
    assert b"Content-Length: 11\r\n" in wire
    assert _read(client, len(wire)) == wire


def test_a_response_without_body_sends_its_head_at_close(exchange):
    response, counting, client = exchange
    response.start_response("204 No Content", [])
    response.close()
    assert len(counting.writes) == 1
    assert counting.writes[0].startswith(b"HTTP/1.1 204 No Content\r\n")
    assert counting.writes[0].endswith(b"\r\n\r\n")
    assert _read(client, len(counting.writes[0])) == counting.writes[0]


def test_a_chunked_body_keeps_its_framing(exchange):
    response, counting, client = exchange
    response.start_response("200 OK", [("Content-Type", "text/plain")])  # no length
    response.write(b"hello")
    response.write(b"world")
    response.close()
    wire = b"".join(counting.writes)
    head, _, body = wire.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"
    assert counting.writes[0].endswith(b"5\r\nhello\r\n")  # the head rode with chunk one
    assert _read(client, len(wire)) == wire


def test_the_date_header_is_formatted_once_per_second(monkeypatch):
    from mole.frontend import gresponse

    formatted: list[float] = []

    original = gresponse._format_http_date  # gunicorn's own, taken before install()

    def counting_format(timestamp=None):
        formatted.append(timestamp)
        return original(timestamp)

    now = [1_700_000_000.25]
    monkeypatch.setattr(gresponse, "_format_http_date", counting_format)
    monkeypatch.setattr(gresponse, "_date_of_second", (0, ""))
    monkeypatch.setattr(gresponse.time, "time", lambda: now[0])
    first = gresponse.http_date()
    now[0] += 0.5
    assert gresponse.http_date() == first == "Tue, 14 Nov 2023 22:13:20 GMT"
    now[0] += 0.5  # the next second
    assert gresponse.http_date() == "Tue, 14 Nov 2023 22:13:21 GMT"
    assert len(formatted) == 2
    assert gresponse.http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"  # an explicit time
