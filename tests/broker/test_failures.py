"""Failures with real processes: SIGKILL/SIGSTOP workers, broker restart, broker SIGTERM.

Heartbeats are 0.2 s with liveness 3, so a silent worker is purged after about 0.6 s.
"""

from __future__ import annotations

import os
import signal
import time

import msgpack
import pytest
import zmq

from tests.broker.brokerfix import (
    HEARTBEAT,
    LIVENESS,
    SILENT_WORKER_KEPT,
    Bus,
    wait_until,
    wait_workers,
    workers_of,
)
from tests.broker.rfc_peers import RfcWorker
from tests.support.procs import free_port

pytestmark = pytest.mark.timeout(120)


def _hold_one_request(bus: Bus, url: str, service: str, delay: float):
    """Start worker A, give it one request and wait until it holds it; then start B."""
    client = bus.client(url)
    a = bus.worker(url, service, delay=delay, worker_id="w-a")
    wait_workers(client, service, 1)
    rid = client.send(service, "precious", ttl_ms=30_000)
    assert wait_until(lambda: workers_of(client, service)[0]["in_flight"] == 1, 10)
    bus.worker(url, service, worker_id="w-b")
    wait_workers(client, service, 2)
    return client, a, rid


def test_sigkilled_worker_request_is_answered_once_by_another(bus):
    url = bus.broker().endpoint
    client, a, rid = _hold_one_request(bus, url, "crashy", delay=30.0)
    a.send_signal(signal.SIGKILL)
    reply = client.recv_final(10)
    assert reply is not None
    assert reply.ok
    assert reply.request_id == rid
    assert reply.payload["worker"] == "w-b"
    assert reply.payload["attempt"] == 1
    assert client.recv(1.0) is None  # exactly one final
    status = client.status()
    assert status["counters"]["redispatched"] == 1
    assert [w["id"] for w in status["workers"]] == ["w-b"]


def test_sigstopped_worker_is_purged_and_its_request_redispatched(bus):
    url = bus.broker().endpoint
    client, a, rid = _hold_one_request(bus, url, "hangs", delay=1.5)
    stopped_at = time.monotonic()
    os.kill(a.pid, signal.SIGSTOP)
    try:
        reply = client.recv_final(10)
        waited = time.monotonic() - stopped_at
        assert reply is not None
        assert reply.ok
        assert reply.request_id == rid
        assert reply.payload["worker"] == "w-b"
        # purged after the liveness window (0.6 s), not before
        assert waited >= HEARTBEAT * (LIVENESS - 1)
        assert [w["id"] for w in workers_of(client, "hangs")] == ["w-b"]
    finally:
        os.kill(a.pid, signal.SIGCONT)
    # A wakes up to the DISCONNECT the broker sent when it purged it, drops its work and
    # registers again; the client never sees a second final
    assert client.recv(2.0) is None
    wait_workers(client, "hangs", 2)
    assert client.status()["counters"]["workers_purged"] == 1


def test_request_for_a_closed_worker_goes_to_a_live_one_without_using_an_attempt(bus):
    """A worker whose connection is gone (closed without DISCONNECT, before any heartbeat
    noticed) is found out when its request is sent: the broker purges it and gives the
    request to a live worker. The failed send is no attempt: with --max-attempts 1 the
    request is still served, as attempt 0."""
    url = bus.broker("--heartbeat-interval", "30", "--max-attempts", "1").endpoint
    client = bus.client(url)
    ctx = zmq.Context.instance()
    gone = ctx.socket(zmq.DEALER)
    gone.connect(url)
    gone.send_multipart([b"MDPW02", b"\x01", b"vanishing", msgpack.packb({"worker_id": "w-gone"})])
    wait_workers(client, "vanishing", 1)
    gone.close(linger=0)
    time.sleep(0.5)  # the broker's libzmq drops the connection; no heartbeat is due for 30 s
    bus.worker(url, "vanishing", worker_id="w-live", heartbeat=30)
    wait_workers(client, "vanishing", 2)
    rid = client.send("vanishing", "still served", ttl_ms=10_000)
    reply = client.recv_final(10)
    assert reply is not None
    assert reply.ok
    assert reply.request_id == rid
    assert reply.payload["worker"] == "w-live"
    assert reply.payload["attempt"] == 0
    assert client.recv(0.5) is None  # exactly one final
    assert [w["id"] for w in workers_of(client, "vanishing")] == ["w-live"]
    counters = client.status()["counters"]
    assert counters["workers_purged"] == 1
    assert counters["redispatched"] == 0


def test_broker_restart_workers_reregister_and_retries_succeed(bus):
    url = f"tcp://127.0.0.1:{free_port()}"
    first = bus.broker(bind=url)
    client = bus.client(url, identity=b"client-keeps-its-id")
    bus.worker(url, "steady", worker_id="w-1")
    bus.worker(url, "steady", worker_id="w-2")
    wait_workers(client, "steady", 2)
    assert client.call("steady", "before").ok

    first.signal(signal.SIGKILL)
    first.wait()
    rid = client.send("steady", "during", ttl_ms=1000)  # lost with the broker
    second = bus.broker(bind=url)
    assert second.pid != first.pid
    reply = None
    for _ in range(20):  # the client retries the same request id until it is answered
        reply = client.recv_final(1.5)
        if reply is not None and reply.ok:
            break
        client.send("steady", "during", ttl_ms=1000, request_id=rid)
    assert reply is not None
    assert reply.ok
    assert reply.request_id == rid
    assert reply.payload["echo"] == "during"
    wait_workers(client, "steady", 2)  # both re-registered with the new broker
    assert client.status()["broker"]["pid"] == second.pid


def test_sigterm_disconnects_workers_answers_waiting_requests_and_exits_0(bus):
    # the raw worker below never heartbeats, and must still hold its request at SIGTERM
    # a short drain: the held request is never answered, so the drain runs out
    broker = bus.broker(*SILENT_WORKER_KEPT, "--drain-timeout", "0.5")
    url = broker.endpoint
    client = bus.client(url)
    ctx = zmq.Context.instance()
    worker = ctx.socket(zmq.DEALER)
    worker.setsockopt(zmq.LINGER, 0)
    worker.connect(url)
    worker.send_multipart([b"MDPW02", b"\x01", b"busy"])
    wait_workers(client, "busy", 1)
    held = client.send("busy", "in flight", ttl_ms=30_000)
    frames = [b"MDPW02", b"\x05"]
    while frames == [b"MDPW02", b"\x05"]:  # skip the broker's heartbeats
        assert worker.poll(5000)
        frames = worker.recv_multipart()
    assert frames[1] == b"\x02"  # the worker holds the request and never answers
    waiting = client.send("nobody", "queued", ttl_ms=30_000)
    assert wait_until(lambda: client.status()["services"]["nobody"]["queue_depth"] == 1, 5)

    broker.signal(signal.SIGTERM)
    assert broker.wait(10) == 0
    replies = {r.request_id: r for r in (client.recv_final(5), client.recv_final(5)) if r}
    assert set(replies) == {held, waiting}
    assert replies[waiting].code == "no_worker"
    assert replies[held].code == "worker_lost"
    assert all("shutting down" in r.header["msg"] for r in replies.values())
    got = []
    while worker.poll(2000):
        got.append(worker.recv_multipart())
        if got[-1] == [b"MDPW02", b"\x06"]:
            break
    assert got
    assert got[-1] == [b"MDPW02", b"\x06"]
    worker.close(0)
    assert "SIGTERM received" in broker.log()


def test_sigterm_drains_requests_in_flight_and_refuses_new_ones(bus):
    """SIGTERM: the requests a worker holds are still answered by it; a new request is
    refused at once with a message saying why; then the broker exits 0."""
    broker = bus.broker("--drain-timeout", "20")
    url = broker.endpoint
    client = bus.client(url)
    bus.worker(url, "slow", slots=4, delay=1.0, worker_id="w-slow")
    wait_workers(client, "slow", 1)
    sent = [client.send("slow", i, ttl_ms=30_000) for i in range(4)]
    assert wait_until(lambda: workers_of(client, "slow")[0]["in_flight"] == 4, 5)
    broker.signal(signal.SIGTERM)
    other = bus.client(url)  # its own socket: the first client's replies stay unread
    assert wait_until(lambda: other.status()["broker"]["draining"], 5)
    refused = other.call("slow", "too late", ttl_ms=30_000, timeout=5)
    assert refused.code == "no_worker"
    assert "shutting down" in refused.header["msg"]
    replies = [client.recv_final(10) for _ in sent]
    assert all(r is not None and r.ok for r in replies)
    assert sorted(r.request_id for r in replies) == sorted(sent)
    assert broker.wait(10) == 0
    assert "draining" in broker.log()


def test_a_heartbeating_worker_that_never_answers_loses_the_request_to_another(bus):
    """What a hung GPU with a live heartbeat thread looks like: after the attempt timeout
    the request also goes to a healthy worker, whose answer the client gets, and the hung
    worker is shown suspect in mmi.status."""
    broker = bus.broker("--attempt-timeout", "0.5", "--suspect-after", "1")
    url = broker.endpoint
    client = bus.client(url)
    hung = RfcWorker(url, "gpu", answers=False, heartbeat=HEARTBEAT).start()
    try:
        wait_workers(client, "gpu", 1)
        rid = client.send("gpu", "classify me", ttl_ms=60_000)
        assert wait_until(lambda: hung.requests == 1, 5)
        bus.worker(url, "gpu", worker_id="w-healthy")
        reply = client.recv_final(30)
        assert reply is not None
        assert reply.ok
        assert reply.request_id == rid
        assert reply.payload["worker"] == "w-healthy"
        assert reply.payload["attempt"] == 1
        rows = {w["id"]: w for w in client.status()["workers"]}
        assert rows["w-healthy"]["suspect"] is False
        [hung_row] = [row for name, row in rows.items() if name != "w-healthy"]
        assert hung_row["suspect"] is True
        counters = client.status()["counters"]
        assert counters["redispatched_after_timeout"] == 1
        assert counters["workers_suspected"] == 1
        for i in range(3):  # no new work for the suspect worker
            assert client.call("gpu", i, ttl_ms=10_000).payload["worker"] == "w-healthy"
        assert hung.requests == 1
    finally:
        hung.stop()
