"""The keep-alive worker's parser shortcut, on a real socket pair with gunicorn's parser:
a body read to its end is not drained again (no socket timeout juggling), and a body the
application left unread is still drained so the next request parses."""

from __future__ import annotations

import socket
import time

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from mole.frontend.gworker import body_consumed, skip_empty_drains


class TimeoutCountingSocket:
    """The real socket, with its ``settimeout`` calls counted (each one is an ioctl)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.settimeouts = 0

    def settimeout(self, value) -> None:
        self.settimeouts += 1
        self.sock.settimeout(value)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def _post(body: bytes) -> bytes:
    return (b"POST /api HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


@pytest.fixture
def connection():
    server, client = socket.socketpair()
    counting = TimeoutCountingSocket(server)
    parser = RequestParser(Config(), counting, ("127.0.0.1", 40000))
    skip_empty_drains(parser)
    yield parser, counting, client
    server.close()
    client.close()


def test_a_body_read_to_its_end_is_not_drained_again(connection):
    parser, counting, client = connection
    client.sendall(_post(b'{"a":1}') + _post(b'{"b":2}'))
    first = next(parser)
    assert first.body.read() == b'{"a":1}'
    assert body_consumed(parser)
    # what gthread calls after a response
    assert parser.finish_body(deadline=time.monotonic() + 5) is True
    second = next(parser)  # next() drains once more before parsing
    assert second.body.read() == b'{"b":2}'
    assert counting.settimeouts == 0


def test_an_unread_body_is_still_drained_and_the_next_request_parses(connection):
    parser, counting, client = connection
    client.sendall(_post(b"x" * 5000) + _post(b"next"))
    first = next(parser)
    assert first.body.read(10) == b"x" * 10
    assert not body_consumed(parser)
    assert parser.finish_body(deadline=time.monotonic() + 5) is True
    assert counting.settimeouts > 0  # gunicorn's bounded drain ran
    assert next(parser).body.read() == b"next"


def test_installing_twice_keeps_one_shortcut(connection):
    parser, _, _ = connection
    installed = parser.finish_body
    skip_empty_drains(parser)
    assert parser.finish_body is installed


def test_frozen_settings_read_the_same_and_skip_getattr():
    from gunicorn.config import Config

    from mole.frontend.gworker import freeze_settings

    cfg = Config()
    cfg.set("keepalive", 7)
    cfg.set("forwarded_allow_ips", "10.0.0.1,127.0.0.1")
    before = {name: getattr(cfg, name) for name in cfg.settings}
    freeze_settings(cfg)
    assert {name: getattr(cfg, name) for name in cfg.settings} == before
    assert vars(cfg)["keepalive"] == 7  # a plain attribute now: no __getattr__ call
    assert "worker_class" not in vars(cfg)  # computed by a Config property, left to it


def test_proxy_decisions_are_remembered_per_address_and_stay_right(monkeypatch):
    from gunicorn.config import Config
    from gunicorn.http import message

    from mole.frontend import gworker

    calls: list[str] = []
    original = message._ip_in_allow_list

    def counted(ip_str, allow_list, networks):  # gunicorn's parameter names
        calls.append(ip_str)
        return original(ip_str, allow_list, networks)

    monkeypatch.setattr(message, "_ip_in_allow_list", counted)
    gworker.remember_proxy_decisions()
    gworker.remember_proxy_decisions()  # a second install keeps the one memo
    cfg = Config()
    cfg.set("forwarded_allow_ips", "10.1.2.3,127.0.0.1")
    allowed, networks = cfg.forwarded_allow_ips, cfg.forwarded_allow_networks()
    decide = message._ip_in_allow_list
    for _ in range(3):
        assert decide("10.1.2.3", allowed, networks) is True
        assert decide("10.1.2.4", allowed, networks) is False
        assert decide("not an address", allowed, networks) is False
    assert calls == ["10.1.2.3", "10.1.2.4", "not an address"]
    # the same address under another allow list is decided again, not taken from the memo
    other = Config()
    other.set("forwarded_allow_ips", "10.1.2.4")
    assert decide("10.1.2.4", other.forwarded_allow_ips, other.forwarded_allow_networks())


def test_a_changed_gunicorn_helper_is_left_alone(monkeypatch):
    from gunicorn.http import message

    from mole.frontend import gworker

    def other_helper(address, allowed):  # what a later gunicorn might have
        return False

    monkeypatch.setattr(message, "_ip_in_allow_list", other_helper)
    gworker.remember_proxy_decisions()
    assert message._ip_in_allow_list is other_helper
