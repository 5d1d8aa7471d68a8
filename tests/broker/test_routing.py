"""Routing through a real broker process: registration, balancing, queues, deadlines, MMI.

Every peer is a real socket on loopback; workers are raw-pyzmq processes
(``tests/support/peers.py``), clients raw DEALER sockets speaking RFC 18.
"""

from __future__ import annotations

import threading
import time
import uuid

import msgpack
import pytest

from tests.broker.brokerfix import Bus, wait_until, wait_workers, workers_of

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One broker for the tests that only add workers of their own service names."""
    made = Bus(tmp_path_factory.mktemp("shared"))
    broker = made.broker("--default-deadline", "1.5")
    yield made, broker.endpoint
    made.close()


def _service() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


def test_registration_then_routing(shared):
    bus, url = shared
    service = f"unsloth/{_service()}-bnb-4bit"  # keys may contain '/'
    client = bus.client(url)
    assert client.service_available(service) is False
    bus.worker(url, service, slots=2, worker_id="w-reg")
    [row] = wait_workers(client, service, 1)
    assert client.service_available(service) is True

    reply = client.call(service, {"text": "hello"})
    assert reply.final
    assert reply.ok
    assert reply.service == service
    assert reply.payload["echo"] == {"text": "hello"}
    assert reply.payload["worker"] == "w-reg"

    [row] = workers_of(client, service)
    assert row["id"] == "w-reg"
    assert row["slots"] == 2
    assert row["served"] == 1
    assert row["in_flight"] == 0
    assert row["address"] == "127.0.0.1"
    assert row["metadata"]["pid"] > 0
    assert row["last_heartbeat_s"] < 1.0
    svc = client.status()["services"][service]
    assert svc == {
        "workers": 1,
        "slots": 2,
        "in_flight": 0,
        "queue_depth": 0,
        "served": 1,
        "errors": 0,
    }


def test_balancing_over_two_workers(shared):
    bus, url = shared
    service = _service()
    client = bus.client(url)
    bus.worker(url, service, delay=0.05, worker_id="w-a")
    bus.worker(url, service, delay=0.05, worker_id="w-b")
    wait_workers(client, service, 2)
    ids = [client.send(service, i, ttl_ms=20_000) for i in range(20)]
    replies = [client.recv_final(20) for _ in ids]
    assert all(r is not None and r.ok for r in replies)
    assert sorted(r.request_id for r in replies) == sorted(ids)
    served = {w: sum(r.payload["worker"] == w for r in replies) for w in ("w-a", "w-b")}
    assert min(served.values()) >= 5, served  # both share the load


def test_slots_give_concurrency(shared):
    bus, url = shared
    service = _service()
    client = bus.client(url)
    bus.worker(url, service, slots=3, delay=2.0)
    wait_workers(client, service, 1)
    for i in range(4):
        client.send(service, i, ttl_ms=20_000)
    # three run at once on the one worker, the fourth waits for a free slot
    assert wait_until(lambda: client.status()["services"][service]["in_flight"] == 3, 5)
    assert client.status()["services"][service]["queue_depth"] == 1
    replies = [client.recv_final(10) for _ in range(4)]
    assert all(r is not None and r.ok for r in replies)


def test_request_before_any_worker_is_served_when_one_registers(shared):
    bus, url = shared
    service = _service()
    client = bus.client(url)
    rid = client.send(service, "early", ttl_ms=30_000)
    assert wait_until(lambda: client.status()["services"][service]["queue_depth"] == 1, 5)
    bus.worker(url, service)
    reply = client.recv_final(20)
    assert reply is not None
    assert reply.ok
    assert reply.request_id == rid
    assert reply.payload["echo"] == "early"
    assert 0 < reply.payload["ttl"] < 30_000  # the broker passed on the time left


def test_service_that_never_appears_gets_no_worker_at_its_deadline(shared):
    bus, url = shared
    client = bus.client(url)
    started = time.monotonic()
    reply = client.call(_service(), "x", ttl_ms=400, timeout=10)
    elapsed = time.monotonic() - started
    assert reply.code == "no_worker"
    assert not reply.ok
    assert "registered within the deadline" in reply.header["msg"]
    assert 0.35 <= elapsed < 5.0


def test_opaque_request_uses_the_default_deadline(shared):
    bus, url = shared
    client = bus.client(url)
    started = time.monotonic()
    client.send_opaque(_service(), b"opaque body")
    reply = client.recv_final(10)
    elapsed = time.monotonic() - started
    assert reply is not None
    assert reply.payload["error"] == "no_worker"
    assert "message" in reply.payload
    assert 1.3 <= elapsed < 6.0  # --default-deadline 1.5


def test_full_queue_answers_overloaded_at_once(bus):
    broker = bus.broker("--queue-limit", "2")
    client = bus.client(broker.endpoint)
    first = [client.send("later", i, ttl_ms=30_000) for i in range(2)]
    assert wait_until(lambda: client.status()["services"]["later"]["queue_depth"] == 2, 5)
    started = time.monotonic()
    reply = client.call("later", "one too many", ttl_ms=30_000)
    assert reply.code == "overloaded"
    assert "queue limit" in reply.header["msg"]
    assert time.monotonic() - started < 2.0  # at once, not at the 30 s deadline
    bus.worker(broker.endpoint, "later")
    replies = [client.recv_final(20) for _ in first]
    assert sorted(r.request_id for r in replies if r and r.ok) == sorted(first)
    assert client.status()["counters"]["errors_by_code"]["overloaded"] == 1


def test_deadline_while_in_flight_then_late_reply_dropped(shared):
    bus, url = shared
    service = _service()
    client = bus.client(url)
    bus.worker(url, service, delay=2.0)
    wait_workers(client, service, 1)
    late_before = client.status()["counters"]["late_replies"]
    started = time.monotonic()
    reply = client.call(service, "slow", ttl_ms=300)
    assert reply.code == "deadline_exceeded"
    assert time.monotonic() - started < 1.8  # the broker's answer, not the worker's
    # the worker answers ~1.7 s later: dropped, and its slot comes back
    assert wait_until(lambda: client.status()["counters"]["late_replies"] == late_before + 1, 5)
    assert client.recv(0.3) is None  # never a second final
    [row] = workers_of(client, service)
    assert row["in_flight"] == 0
    assert client.call(service, "again", ttl_ms=5000).ok


def test_duplicate_request_id_is_done_once(shared):
    bus, url = shared
    service = _service()
    client = bus.client(url)
    bus.worker(url, service, delay=0.3)
    wait_workers(client, service, 1)
    client.send(service, "once", ttl_ms=10_000, request_id="same-id")
    client.send(service, "once", ttl_ms=10_000, request_id="same-id")  # e.g. a resend
    reply = client.recv_final(10)
    assert reply is not None
    assert reply.request_id == "same-id"
    assert reply.ok
    assert client.recv(0.6) is None
    [row] = workers_of(client, service)
    assert row["served"] == 1


def test_mmi_service_and_unknown_mmi(shared):
    bus, url = shared
    service = _service()
    client = bus.client(url)
    bus.worker(url, service)
    wait_workers(client, service, 1)
    # plain RFC 8: body [name] -> [b"200" / b"404"]
    client.send_opaque("mmi.service", service.encode())
    assert client.recv(5).frames[3:] == [b"200"]
    client.send_opaque("mmi.service", b"nobody-serves-this")
    assert client.recv(5).frames[3:] == [b"404"]
    # ours: [header, name] -> [reply header, b"200"]
    assert client.service_available(service) is True
    client.send_opaque("mmi.whatever", b"x")
    reply = client.recv(5)
    assert reply.service == "mmi.whatever"
    assert reply.frames[3:] == [b"501"]
    # mmi.status with a plain body answers the status map alone
    client.send_opaque("mmi.status", b"")
    status = msgpack.unpackb(client.recv(5).frames[3], raw=False)
    assert service in status["services"]
    assert {"broker", "workers", "counters"} <= set(status)


def _plain_worker(url: str, service: bytes, seen: list, stop: threading.Event) -> None:
    """An RFC 18 worker as a third party writes it: READY without metadata, PARTIAL, FINAL."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    sock.send_multipart([b"MDPW02", b"\x01", service])
    next_beat = time.monotonic() + 0.2
    while not stop.is_set():
        if sock.poll(50):
            frames = sock.recv_multipart()
            if frames[1] == b"\x02":
                seen.append(frames)
                client, body = frames[2], frames[4:]
                sock.send_multipart([b"MDPW02", b"\x03", client, b"", b"working"])
                sock.send_multipart([b"MDPW02", b"\x04", client, b"", b"pong:" + body[0]])
        if time.monotonic() >= next_beat:
            sock.send_multipart([b"MDPW02", b"\x05"])
            next_beat = time.monotonic() + 0.2
    sock.close(0)


def test_plain_rfc18_client_and_worker(shared):
    import zmq

    bus, url = shared
    service = _service()
    seen: list = []
    stop = threading.Event()
    thread = threading.Thread(target=_plain_worker, args=(url, service.encode(), seen, stop))
    thread.start()
    try:
        status_client = bus.client(url)
        [row] = wait_workers(status_client, service, 1)
        assert row["slots"] == 1
        assert row["metadata"] == {}
        client = zmq.Context.instance().socket(zmq.DEALER)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(url)
        client.send_multipart([b"MDPC02", b"\x01", service.encode(), b"ping"])
        assert client.poll(5000)
        partial = client.recv_multipart()
        assert partial == [b"MDPC02", b"\x02", service.encode(), b"working"]
        assert client.poll(5000)
        final = client.recv_multipart()
        assert final == [b"MDPC02", b"\x03", service.encode(), b"pong:ping"]
        client.close(0)
        # the worker saw RFC 18's REQUEST: header, command, client address, empty, body
        [frames] = seen
        assert frames[:2] == [b"MDPW02", b"\x02"]
        assert frames[2]
        assert frames[3] == b""
        assert frames[4:] == [b"ping"]
    finally:
        stop.set()
        thread.join(5)


def test_reconnecting_client_keeps_its_routing_id_and_is_not_served_twice(shared):
    bus, url = shared
    service = _service()
    watcher = bus.client(url)
    bus.worker(url, service, delay=0.6)
    wait_workers(watcher, service, 1)
    old = bus.client(url, identity=b"client-keeps-id")
    old.send(service, "work", ttl_ms=10_000, request_id="r-1")
    assert wait_until(lambda: workers_of(watcher, service)[0]["in_flight"] == 1, 5)
    # the same client comes back on a new connection (the old one still open) and resends:
    # ROUTER_HANDOVER gives it the routing id, and (client, request id) de-duplicates
    new = bus.client(url, identity=b"client-keeps-id")
    new.send(service, "work", ttl_ms=10_000, request_id="r-1")
    reply = new.recv_final(10)
    assert reply is not None
    assert reply.ok
    assert reply.request_id == "r-1"
    assert new.recv(0.8) is None
    assert old.recv(0.1) is None
    assert workers_of(watcher, service)[0]["served"] == 1
    assert watcher.status()["counters"]["duplicates"] >= 1


def test_invented_service_names_do_not_accumulate(shared):
    bus, url = shared
    client = bus.client(url)
    for i in range(20):
        assert client.call(f"invented-now-{i}", i, ttl_ms=0).code == "deadline_exceeded"
    for i in range(20):
        client.send(f"invented-soon-{i}", i, ttl_ms=50)
    codes = [client.recv_final(5).code for _ in range(20)]
    assert codes == ["no_worker"] * 20
    names = client.status()["services"]
    assert not [name for name in names if name.startswith("invented-")]
