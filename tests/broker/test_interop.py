"""A real broker process against Majordomo peers written from the RFC texts
(``tests/broker/rfc_peers.py``), and the project's client against a plain RFC 18 worker.

All on one broker socket at once: MDP/0.1 clients and workers, MDP/0.2 with and without a
leading empty delimiter.
"""

from __future__ import annotations

import asyncio

import pytest
import zmq

from mole.protocol.aio import AsyncClient
from mole.protocol.client import Client, RawReply
from mole.protocol.threaded import PerThreadClient
from tests.broker.brokerfix import Bus, wait_until, wait_workers
from tests.broker.rfc_peers import RfcWorker, rfc7_client_request, rfc18_client_request

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def bus_url(tmp_path_factory):
    made = Bus(tmp_path_factory.mktemp("interop"))
    broker = made.broker()
    yield made, broker.endpoint
    made.close()


@pytest.fixture
def workers():
    started: list[RfcWorker] = []
    yield started
    for worker in started:
        worker.stop()


def _worker(bus_url, workers, service: str, **kwargs) -> RfcWorker:
    bus, url = bus_url
    worker = RfcWorker(url, service, **kwargs).start()
    workers.append(worker)
    wait_workers(bus.client(url), service, 1)
    return worker


def test_rfc7_client_and_rfc7_worker(bus_url, workers):
    _, url = bus_url
    worker = _worker(bus_url, workers, "echo-01", version="0.1")
    reply = rfc7_client_request(url, b"echo-01", b"hello", b"world")
    assert reply == [b"MDPC01", b"echo-01", b"HELLO", b"WORLD"]
    assert worker.requests == 1


def test_rfc7_worker_gets_heartbeats_in_its_framing(bus_url, workers):
    worker = _worker(bus_url, workers, "beat-01", version="0.1")
    # the broker heartbeats every 0.2 s; RfcWorker asserts each message had the empty frame
    assert wait_until(lambda: worker.commands("heartbeat") >= 3, 10)


def test_rfc7_client_served_by_an_rfc18_worker(bus_url, workers):
    _, url = bus_url
    _worker(bus_url, workers, "mixed-a")
    assert rfc7_client_request(url, b"mixed-a", b"abc") == [b"MDPC01", b"mixed-a", b"ABC"]


def test_rfc18_client_served_by_an_rfc7_worker(bus_url, workers):
    _, url = bus_url
    _worker(bus_url, workers, "mixed-b", version="0.1")
    [reply] = rfc18_client_request(url, b"mixed-b", b"abc")
    assert reply == [b"MDPC02", b"\x03", b"mixed-b", b"ABC"]


def test_rfc18_client_on_a_req_socket_is_answered_behind_the_delimiter(bus_url, workers):
    _, url = bus_url
    _worker(bus_url, workers, "req-02")
    [reply] = rfc18_client_request(url, b"req-02", b"xyz", req_socket=True)
    assert reply == [b"MDPC02", b"\x03", b"req-02", b"XYZ"]  # REQ stripped the delimiter


def test_delimited_rfc18_worker_with_partials(bus_url, workers):
    _, url = bus_url
    worker = _worker(bus_url, workers, "delim-02", delimiter=True, partials=(b"p1", b"p2"))
    replies = rfc18_client_request(url, b"delim-02", b"q")
    assert replies == [
        [b"MDPC02", b"\x02", b"delim-02", b"p1"],
        [b"MDPC02", b"\x02", b"delim-02", b"p2"],
        [b"MDPC02", b"\x03", b"delim-02", b"Q"],
    ]
    assert wait_until(lambda: worker.commands("heartbeat") >= 1, 10)


def test_bodyless_final_from_a_plain_worker_reaches_an_rfc18_client_as_four_frames(
    bus_url, workers
):
    _, url = bus_url
    _worker(bus_url, workers, "empty-02", reply=lambda body: [])
    [reply] = rfc18_client_request(url, b"empty-02", b"x")
    assert reply == [b"MDPC02", b"\x03", b"empty-02", b""]


def test_unreadable_messages_get_an_answer_in_the_senders_protocol(bus_url):
    _, url = bus_url
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    try:
        sock.send_multipart([b"", b"MDPW01", b"\x04"])  # 0.1 HEARTBEAT from nobody registered
        assert sock.poll(5000)
        assert sock.recv_multipart() == [b"", b"MDPW01", b"\x05"]
        sock.send_multipart([b"MDPC02", b"\x03", b"svc", b"x"])  # a client may not send FINAL
        assert sock.poll(5000)
        reply = sock.recv_multipart()
        assert reply[:3] == [b"MDPC02", b"\x03", b"svc"]
        assert b"bad_request" in reply[3]
    finally:
        sock.close(0)


def test_project_client_returns_a_plain_workers_reply_as_raw_frames(bus_url, workers):
    _, url = bus_url
    _worker(bus_url, workers, "plain-02", reply=lambda body: [b"plain answer", b"\xc1"])
    with Client(url, timeout=20.0) as client:
        answer = client.request("plain-02", {"text": "hi"})
    # returned, not discarded (which would end in DeadlineExceeded after 20 s)
    assert answer == RawReply((b"plain answer", b"\xc1"))


def test_project_client_streams_a_plain_workers_partials_as_raw_frames(bus_url, workers):
    _, url = bus_url
    _worker(bus_url, workers, "plain-stream", partials=(b"a", b"b"), reply=lambda body: [b"z"])
    with Client(url, timeout=20.0) as client:
        parts = list(client.stream("plain-stream", {"text": "hi"}))
    assert parts == [RawReply((b"a",)), RawReply((b"b",)), RawReply((b"z",))]


def test_per_thread_and_asyncio_clients_return_raw_replies_too(bus_url, workers):
    _, url = bus_url
    _worker(bus_url, workers, "plain-others", reply=lambda body: [b"r1", b"r2"])
    client = PerThreadClient(url, timeout=20.0)
    try:
        assert client.request("plain-others", 1) == RawReply((b"r1", b"r2"))
    finally:
        client.close()

    async def ask() -> object:
        async with AsyncClient(url, timeout=20.0) as aclient:
            return await aclient.request("plain-others", 2)

    assert asyncio.run(ask()) == RawReply((b"r1", b"r2"))


def test_a_bodyless_plain_reply_is_an_empty_raw_reply(bus_url, workers):
    _, url = bus_url
    _worker(bus_url, workers, "plain-empty", reply=lambda body: [])
    with Client(url, timeout=20.0) as client:
        assert client.request("plain-empty", 1) == RawReply(())
