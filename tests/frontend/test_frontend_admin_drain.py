"""``POST /api/v1/admin/workers/{id}/drain`` and ``/resume`` on the real app and broker.

The worker is a raw DEALER that registers its own service (written from RFC 18 here), so
draining it touches no other test's workers. The session broker runs without CURVE, so the
frontend may manage (the forbidden case under CURVE is the broker's, tested in
tests/broker/test_engine_manage.py and tests/cli/test_drain_remote.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import msgpack
import pytest
import zmq

from mole.protocol.client import Client
from tests.support.procs import wait_until

WORKER_ID = "admin-drain-" + uuid.uuid4().hex[:8]
SERVICE = "admin-drain-svc-" + WORKER_ID[-8:]


@pytest.fixture
def raw_worker(broker_url) -> Iterator[str]:
    """A registered RFC 18 worker with a worker id of its own; DISCONNECT at the end."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(broker_url)
    meta = msgpack.packb({"worker_id": WORKER_ID, "slots": 1})
    sock.send_multipart([b"MDPW02", b"\x01", SERVICE.encode(), meta])
    with Client(broker_url, timeout=5.0) as client:
        assert wait_until(lambda: client.service_available(SERVICE, timeout=2.0), timeout=10)
    try:
        yield WORKER_ID
    finally:
        sock.send_multipart([b"MDPW02", b"\x06"])
        sock.close(0)


def _row(api, admin) -> dict:
    r = api.client.simulate_get("/api/v1/admin/workers", headers=admin)
    assert r.status_code == 200
    [row] = [w for w in r.json["workers"] if w["id"] == WORKER_ID]
    return dict(row)


def test_an_admin_drains_and_resumes_a_worker_through_the_broker(api, raw_worker):
    admin = api.user("root", admin=True)
    url = f"/api/v1/admin/workers/{raw_worker}"
    refused = api.client.simulate_post(f"{url}/drain", headers=api.user("pleb"))
    assert refused.status_code == 403
    assert _row(api, admin)["draining"] is False

    r = api.client.simulate_post(f"{url}/drain", headers=admin)
    assert r.status_code == 200, r.text
    assert (r.json["worker"], r.json["service"], r.json["state"]) == (WORKER_ID, SERVICE, "drained")
    assert _row(api, admin)["draining"] is True

    r = api.client.simulate_post(f"{url}/resume", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json["state"] == "active"
    assert _row(api, admin)["draining"] is False


def test_draining_an_unknown_worker_is_404_naming_it(api, fixed_workers):
    admin = api.user("root", admin=True)
    r = api.client.simulate_post("/api/v1/admin/workers/no-such-worker/drain", headers=admin)
    assert r.status_code == 404
    assert r.json["error"] == "unknown_worker"
    assert "'no-such-worker'" in r.json["detail"]
