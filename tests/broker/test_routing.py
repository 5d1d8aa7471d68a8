"""Routing through a real broker process: what only processes and real sockets show.

Registration of a worker process (its address as libzmq reports it), a request waiting
for a worker that starts later, and a client reconnecting under its routing id
(ROUTER_HANDOVER). Balancing, queues, deadlines, de-duplication and MMI are tested on the
core in-process (``test_engine_*.py``). Every peer is a real socket on loopback; workers
are raw-pyzmq processes (``tests/support/peers.py``), clients raw DEALER sockets.
"""

from __future__ import annotations

import time
import uuid

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


@pytest.mark.timing
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


def test_a_burst_larger_than_a_send_batch_is_answered_in_full(shared):
    """Many messages read in one wake-up: the shell sends what the core produced in batches
    (broker.shell.SEND_BATCH); none may be lost between batches."""
    bus, url = shared
    service = _service()
    client = bus.client(url)
    bus.worker(url, service, slots=64, worker_id="w-burst")
    wait_workers(client, service, 1)
    sent = {client.send(service, i, ttl_ms=30_000) for i in range(300)}
    replies = []
    end = time.monotonic() + 30
    while len(replies) < len(sent) and (reply := client.recv_final(end - time.monotonic())):
        replies.append(reply)
    assert all(r.ok for r in replies)
    assert {r.request_id for r in replies} == sent
