"""The socket shell (``broker.shell.Broker``) in a thread, over ``inproc://`` sockets.

What the core cannot show: that the shell decodes what it receives, sends everything the
core returns (also across its send batches), runs the timers, and drains then stops.
"""

from __future__ import annotations

import threading
import uuid

import msgpack
import pytest
import zmq

from mole.broker.settings import BrokerSettings
from mole.broker.shell import SEND_BATCH, Broker
from tests.support.procs import wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def running():
    ctx = zmq.Context()
    url = f"inproc://broker-{uuid.uuid4().hex[:8]}"
    broker = Broker(
        BrokerSettings(bind=url, heartbeat_interval=0.5, drain_timeout=5.0), context=ctx
    )
    broker.bind()
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    sockets: list[zmq.Socket] = []

    def dealer() -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(url)
        sockets.append(sock)
        return sock

    yield broker, thread, dealer
    broker.stop()
    thread.join(10)
    for sock in sockets:
        sock.close(0)
    ctx.term()


def _recv(sock: zmq.Socket, timeout_ms: int = 5000) -> list[bytes]:
    assert sock.poll(timeout_ms), "nothing from the broker"
    return sock.recv_multipart()


def test_every_reply_of_a_burst_larger_than_a_send_batch_arrives(running):
    _broker, _thread, dealer = running
    worker, client = dealer(), dealer()
    worker.send_multipart([b"MDPW02", b"\x01", b"echo", msgpack.packb({"slots": 1000})])
    # two connections: the client's question may reach the broker before the READY does
    for _ in range(100):
        client.send_multipart([b"MDPC02", b"\x01", b"mmi.service", b"echo"])
        if _recv(client)[3] == b"200":
            break
    else:
        raise AssertionError("the worker never registered")
    count = SEND_BATCH * 8
    for i in range(count):
        client.send_multipart([b"MDPC02", b"\x01", b"echo", str(i).encode()])
    tickets = []
    while len(tickets) < count:
        frames = _recv(worker)
        if frames[1] == b"\x02":
            tickets.append((frames[2], frames[4]))
    for ticket, body in tickets:
        worker.send_multipart([b"MDPW02", b"\x04", ticket, b"", body])
    bodies = sorted(int(_recv(client)[3]) for _ in range(count))
    assert bodies == list(range(count))


def test_stop_drains_in_flight_work_then_disconnects_workers(running):
    broker, thread, dealer = running
    worker, client = dealer(), dealer()
    worker.send_multipart([b"MDPW02", b"\x01", b"slow"])

    def registered() -> bool:  # the READY and this question come on two connections: ask again
        client.send_multipart([b"MDPC02", b"\x01", b"mmi.service", b"slow"])
        return _recv(client)[3] == b"200"

    assert wait_until(registered, 5, interval=0.01), "the worker never registered"
    client.send_multipart([b"MDPC02", b"\x01", b"slow", b"work"])
    request = _recv(worker)
    while request[1] != b"\x02":  # skip heartbeats
        request = _recv(worker)
    broker.stop()
    assert wait_until(lambda: broker.engine.draining, 5)  # the loop notices within 0.2 s
    client.send_multipart([b"MDPC02", b"\x01", b"slow", b"late"])
    refused = _recv(client)
    assert b"shutting down" in refused[3]
    assert thread.is_alive()  # still draining: the request in flight is not answered yet
    worker.send_multipart([b"MDPW02", b"\x04", request[2], b"", b"done"])
    assert _recv(client) == [b"MDPC02", b"\x03", b"slow", b"done"]
    thread.join(5)
    assert not thread.is_alive()
    frames = _recv(worker)
    while frames[1] == b"\x05":
        frames = _recv(worker)
    assert frames == [b"MDPW02", b"\x06"]
