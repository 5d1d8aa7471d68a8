"""Slow and abusive clients against the real server (gunicorn over uvicorn workers), with
raw sockets on loopback: a thousand connections dribbling heads or bodies leave the
health check fast; heads and bodies that arrive too slowly, heads too large and
connections past the cap are refused in the documented error shape; idle kept-alive
connections are closed; chunked bodies are bounded."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.frontend.frontend_support import call, frontend_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def roomy(broker_url, tmp_path_factory, logs_dir) -> Iterator[str]:
    """Production limits (10 s heads, 30 s bodies, 4096 connections a process), 2 processes."""
    data = tmp_path_factory.mktemp("roomy")
    with frontend_process(broker_url, data, logs_dir / "roomy.log", "--workers", "2") as base:
        yield base


@pytest.fixture(scope="module")
def strict(broker_url, tmp_path_factory, logs_dir) -> Iterator[str]:
    """One process with tight limits, so each can be crossed quickly; it sends each
    response in one write (MOLE_COALESCE_WRITES, off by default), so its refusals and
    closes are checked through CoalescingTransport too."""
    data = tmp_path_factory.mktemp("strict")
    with frontend_process(
        broker_url,
        data,
        logs_dir / "strict.log",
        *("--workers", "1", "--max-connections", "20"),
        MOLE_HEADER_TIMEOUT_SECONDS="1",
        MOLE_BODY_TIMEOUT_SECONDS="1",
        MOLE_MAX_HEADER_BYTES="8192",
        MOLE_KEEPALIVE_SECONDS="1",
        MOLE_MAX_BODY_BYTES="1000",
        MOLE_COALESCE_WRITES="on",
    ) as base:
        yield base


def address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


def connect(base: str) -> socket.socket:
    return socket.create_connection(address(base), timeout=10)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body: (status, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of a body"
        body += chunk
    return status, headers, body[:length]


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (EOF or reset)."""
    sock.settimeout(within)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def assert_error_shape(body: bytes, code: str) -> dict:
    document = json.loads(body)
    assert document["error"] == code
    assert isinstance(document["detail"], str)
    assert document["detail"]
    assert "request_id" in document
    return document


@pytest.mark.timing
def test_a_thousand_dribbling_clients_do_not_delay_the_health_check(roomy):
    """500 connections send half a head and 500 send a head and half a body, a byte
    at a time; meanwhile every health check on a new connection answers within 1 s, and
    the dribblers are still connected (held, not dropped) when the checks are done."""
    head_dribblers, body_dribblers = [], []
    try:
        for _ in range(500):
            s = connect(roomy)
            s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            head_dribblers.append(s)
            s = connect(roomy)
            s.sendall(
                b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"
            )
            body_dribblers.append(s)
        stop = threading.Event()

        def dribble() -> None:
            while not stop.is_set():
                for s in head_dribblers + body_dribblers:
                    s.send(b"a")
                stop.wait(0.2)

        dribbler = threading.Thread(target=dribble, daemon=True)
        dribbler.start()
        took = []
        for _ in range(10):
            started = time.monotonic()
            status, _, body = call("GET", f"{roomy}/api/v1/health", timeout=5)
            took.append(time.monotonic() - started)
            assert status == 200
            assert body["status"] == "healthy"
            time.sleep(0.1)
        stop.set()
        dribbler.join(5)
        assert max(took) < 1.0, took
        # none of them was answered or dropped: each is still waiting on the server
        for s in head_dribblers[::50] + body_dribblers[::50]:
            assert not closed_by_peer(s, 0.01)
    finally:
        for s in head_dribblers + body_dribblers:
            s.close()


def test_a_head_that_does_not_arrive_in_time_gets_408_and_is_closed(strict):
    with connect(strict) as s:
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")  # no blank line
        status, headers, body = read_response(s)
        assert status == 408
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert_error_shape(body, "header_timeout")
        assert closed_by_peer(s, 5)


def test_a_connection_that_sends_nothing_is_closed(strict):
    with connect(strict) as s:
        assert closed_by_peer(s, 5)


def test_a_body_that_does_not_arrive_in_time_gets_408_and_is_closed(strict):
    with connect(strict) as s:
        s.sendall(
            b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"user'
        )
        status, headers, body = read_response(s)
        assert status == 408
        assert headers["connection"] == "close"
        document = assert_error_shape(body, "body_timeout")
        assert document["request_id"] == headers["x-request-id"]
        assert closed_by_peer(s, 5)


def test_a_head_over_the_limit_gets_431(strict):
    with connect(strict) as s:
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n")
        status, _headers, body = read_response(s)
        assert status == 431
        assert_error_shape(body, "headers_too_large")
        assert closed_by_peer(s, 5)
    # a head under the limit is served
    status, _, _ = call("GET", f"{strict}/api/v1/health", headers={"X-Big": "b" * 4000})
    assert status == 200


def test_connections_past_the_cap_get_a_clean_503(strict):
    idle = [connect(strict) for _ in range(25)]  # past the cap of 20
    try:
        time.sleep(0.3)  # accepted by the server
        with connect(strict) as s:
            s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_response(s)
        assert status == 503
        assert headers["connection"] == "close"
        assert headers["retry-after"] == "1"
        assert_error_shape(body, "too_many_connections")
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    assert call("GET", f"{strict}/api/v1/health")[0] == 200  # the cap frees up


def test_an_idle_kept_alive_connection_is_closed(strict):
    with connect(strict) as s:
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_response(s)
        assert status == 200
        assert headers.get("connection", "keep-alive") != "close"
        assert closed_by_peer(s, 5)  # MOLE_KEEPALIVE_SECONDS=1


def _chunked(payload: bytes) -> bytes:
    return (
        b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:300], payload[300:]) if part
        )
        + b"0\r\n\r\n"
    )


def test_chunked_bodies_are_bounded(strict):
    head = (
        b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    big = json.dumps({"username": "x" * 2000, "password": "longenough"}).encode()
    with connect(strict) as s:
        s.sendall(head + _chunked(big))
        status, _, body = read_response(s)
    assert status == 413
    assert_error_shape(body, "payload_too_large")
    small = json.dumps({"username": "chunky", "password": "longenough"}).encode()
    with connect(strict) as s:
        s.sendall(head + _chunked(small))
        status, _, body = read_response(s)
    assert status == 201, body
    assert json.loads(body)["username"] == "chunky"


def test_a_request_line_the_parser_cannot_read_is_refused(strict):
    """uvicorn answers this one itself (plain text: it offers no hook for the body)."""
    with connect(strict) as s:
        s.sendall(b"NOT A REQUEST\r\n\r\n")
        status, _, _ = read_response(s)
        assert status == 400
        assert closed_by_peer(s, 5)
