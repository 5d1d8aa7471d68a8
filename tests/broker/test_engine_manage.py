"""``mmi.drain`` / ``mmi.resume`` on the broker core, in-process with a fake clock.

The operator takes one worker out of service: it gets no new requests while another
worker of the service does, what it holds finishes and reaches its client, the reply says
how far the drain got, and resume brings the worker back. Requests are written as the
raw frames of RFC 18 plus our header (``engine_support``); replies are read back as frames.
"""

from __future__ import annotations

import json

import pytest
import zmq.auth

from mole.broker.admission import KeyAdmission
from mole.broker.curve import KeyRing
from tests.broker.engine_support import (
    C02,
    FINAL_C,
    REQUEST,
    W02,
    W_DISCONNECT,
    W_FINAL,
    W_HEARTBEAT,
    W_REQUEST,
    Harness,
    dispatched,
    header,
    only,
    pack,
    reply_header,
    unpack,
)

SVC = "qwen"


def _manage(
    h: Harness, service: str, payload: object, key: str | None = None, client: bytes = b"op"
) -> dict:
    """Send one management request with our header; return the decoded reply header and
    payload as ``{"header": ..., "body": ...}``."""
    out = h.send(client, [C02, REQUEST, service.encode(), header("m1"), pack(payload)], key=key)
    to, frames = only(out)
    assert to == client
    assert frames[:3] == [C02, FINAL_C, service.encode()]
    reply = {"header": unpack(frames[3])}
    if len(frames) > 4:
        reply["body"] = unpack(frames[4])
    return reply


def _drain(h: Harness, worker: str, **fields: object) -> dict:
    reply = _manage(h, "mmi.drain", {"worker": worker, **fields})
    assert reply["header"]["ok"] is True, reply
    return reply["body"]


def _resume(h: Harness, worker: str) -> dict:
    reply = _manage(h, "mmi.resume", worker)
    assert reply["header"]["ok"] is True, reply
    return reply["body"]


def _final(h: Harness, worker: bytes, ticket: bytes, rid: str, payload: object = "ok") -> list:
    return h.send(worker, [W02, W_FINAL, ticket, b"", reply_header(rid), pack(payload)])


def _two_workers() -> Harness:
    h = Harness(heartbeat_interval=10.0)
    h.ready(b"wa", SVC, slots=2, worker_id="A")
    h.ready(b"wb", SVC, slots=2, worker_id="B")
    return h


def test_a_drained_worker_gets_no_new_work_while_the_other_does():
    h = _two_workers()
    report = _drain(h, "A")
    assert report["state"] == "drained"  # idle at once: nothing in flight
    assert (report["in_flight"], report["serving_workers"]) == (0, 1)
    targets = [dispatched(h.request(b"c", SVC, f"r{i}"))[0][0] for i in range(2)]
    assert targets == [b"wb", b"wb"]
    row = {w["id"]: w for w in h.status()["workers"]}
    assert (row["A"]["draining"], row["B"]["draining"]) == (True, False)


def test_in_flight_work_finishes_and_reaches_its_client_then_the_report_says_drained():
    h = _two_workers()
    sent = dispatched(h.request(b"c1", SVC, "r1")) + dispatched(h.request(b"c2", SVC, "r2"))
    on_a = [
        (ticket, rid) for (w, ticket, _), rid in zip(sent, ("r1", "r2"), strict=True) if w == b"wa"
    ]
    assert len(on_a) == 1
    report = _drain(h, "A")
    assert (report["state"], report["in_flight"]) == ("draining", 1)
    ticket, rid = on_a[0]
    client, frames = only(_final(h, b"wa", ticket, rid, "answer from A"))
    assert client == {"r1": b"c1", "r2": b"c2"}[rid]
    assert unpack(frames[4]) == "answer from A"
    polled = _drain(h, "A")  # asking again is how the operator polls
    assert (polled["state"], polled["in_flight"]) == ("drained", 0)
    assert h.status()["counters"]["workers_drained"] == 1  # the poll drained nothing new


def test_resume_brings_the_worker_back():
    h = _two_workers()
    _drain(h, "A")
    report = _resume(h, "A")
    assert (report["state"], report["registered"]) == ("active", 1)
    targets = {dispatched(h.request(b"c", SVC, f"r{i}"))[0][0] for i in range(4)}
    assert targets == {b"wa", b"wb"}
    assert h.status()["drained"] == []
    assert h.status()["counters"]["workers_resumed"] == 1


def test_resume_sends_the_waiting_queue_to_the_worker():
    h = Harness(heartbeat_interval=10.0)
    h.ready(b"wa", SVC, worker_id="A")
    report = _drain(h, "A")
    assert report["serving_workers"] == 0
    assert "wait in the queue" in report["note"]
    assert dispatched(h.request(b"c", SVC, "r1", ttl_ms=60_000)) == []
    assert h.status()["services"][SVC]["queue_depth"] == 1
    reply = h.send(b"op", [C02, REQUEST, b"mmi.resume", header("m2"), pack("A")])
    assert sorted((w, f[:2]) for w, f in reply) == [
        (b"op", [C02, FINAL_C]),
        (b"wa", [W02, W_REQUEST]),
    ]


def test_draining_the_last_worker_queues_requests_until_their_deadline_with_a_clear_error():
    h = Harness(heartbeat_interval=10.0)
    h.ready(b"wa", SVC, worker_id="A")
    _drain(h, "A")
    assert dispatched(h.request(b"c", SVC, "r1", ttl_ms=2_000)) == []
    client, frames = only(h.advance(2.0))
    assert client == b"c"
    error = unpack(frames[3])
    assert (error["ok"], error["code"]) == (False, "no_worker")
    assert "drained for maintenance" in error["msg"]


def test_an_unknown_worker_id_gets_an_error_naming_it():
    h = _two_workers()
    for service in ("mmi.drain", "mmi.resume"):
        reply = _manage(h, service, {"worker": "nobody"})
        assert reply["header"]["code"] == "unknown_worker"
        assert "'nobody'" in reply["header"]["msg"]
        assert "A, B" in reply["header"]["msg"]
    assert all(not w["draining"] for w in h.status()["workers"])


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"worker": ""},
        {"worker": 7},
        {"worker": "A", "disconnect": "yes"},
        {"worker": "A", "x": 1},
    ],
)
def test_a_malformed_management_request_gets_bad_request(payload):
    h = _two_workers()
    reply = _manage(h, "mmi.drain", payload)
    assert reply["header"]["code"] == "bad_request"
    assert "mmi.drain" in reply["header"]["msg"]


def test_a_plain_rfc_client_names_the_worker_in_its_body_frame():
    h = _two_workers()
    _client, frames = only(h.send(b"rfc", [C02, REQUEST, b"mmi.drain", b"B"]))
    assert frames[:3] == [C02, FINAL_C, b"mmi.drain"]
    assert unpack(frames[3])["state"] == "drained"
    assert dispatched(h.request(b"c", SVC, "r1"))[0][0] == b"wa"


def test_a_worker_that_reregisters_stays_drained_until_resumed():
    h = _two_workers()
    _drain(h, "A")
    h.send(b"wa", [W02, W_DISCONNECT])  # an RFC 18 worker reconnects ...
    assert _drain(h, "A")["state"] == "offline"
    h.ready(b"wa2", SVC, slots=2, worker_id="A")  # ... and sends READY again
    assert {w["id"]: w["draining"] for w in h.status()["workers"]} == {"A": True, "B": False}
    assert {dispatched(h.request(b"c", SVC, f"r{i}"))[0][0] for i in range(2)} == {b"wb"}
    _resume(h, "A")
    # B's two slots are busy with r0 and r1: the next two go to A's new registration
    assert {dispatched(h.request(b"c", SVC, f"s{i}"))[0][0] for i in range(2)} == {b"wa2"}


def test_disconnect_when_idle_sends_disconnect_and_keeps_the_worker_out():
    h = _two_workers()
    [(worker, ticket, _)] = dispatched(h.request(b"c", SVC, "r1"))
    assert worker == b"wa"
    report = _drain(h, "A", disconnect=True)
    assert (report["state"], report["disconnect"]) == ("draining", True)
    assert h.advance(0.5) == []  # still busy: no DISCONNECT yet
    only(_final(h, b"wa", ticket, "r1"))
    assert (b"wa", [W02, W_DISCONNECT]) in h.advance(0.5)
    assert _drain(h, "A")["state"] == "offline"
    # it reconnects and sends READY again: refused while drained
    refused = h.send(b"wa2", [W02, b"\x01", SVC.encode(), pack({"worker_id": "A", "slots": 2})])
    assert refused == [(b"wa2", [W02, W_DISCONNECT])]
    assert [w["id"] for w in h.status()["workers"]] == ["B"]
    assert h.status()["counters"]["drained_ready_refused"] == 1
    assert _resume(h, "A")["state"] == "released"  # it serves once it registers again
    h.ready(b"wa3", SVC, worker_id="A")
    assert {w["id"]: w["draining"] for w in h.status()["workers"]} == {"A": False, "B": False}


def test_a_suspect_worker_that_answers_again_stays_drained():
    h = Harness(heartbeat_interval=10.0, attempt_timeout=1.0, suspect_after=1)
    h.ready(b"wa", SVC, worker_id="A")
    [(_, ticket, _)] = dispatched(h.request(b"c", SVC, "r1", ttl_ms=60_000))
    h.advance(1.1)  # the attempt timed out: A is suspect
    assert h.status()["workers"][0]["suspect"] is True
    _drain(h, "A")
    h.send(b"wa", [W02, W_HEARTBEAT])
    only(_final(h, b"wa", ticket, "r1"))  # answers: no longer suspect, but still drained
    row = h.status()["workers"][0]
    assert (row["suspect"], row["draining"]) == (False, True)
    assert dispatched(h.request(b"c", SVC, "r2")) == []


def test_status_lists_drained_worker_ids():
    h = _two_workers()
    _drain(h, "A")
    h.advance(3.0)
    [row] = h.status()["drained"]
    assert (row["worker"], row["service"], row["state"], row["since_s"]) == (
        "A",
        SVC,
        "drained",
        3.0,
    )


# ---------------------------------------------------------------------- who may manage


@pytest.fixture
def curve_harness(tmp_path):
    """An engine with the allow-list and ACL `mole up` writes: worker, frontend, operator."""
    allow = tmp_path / "allow"
    allow.mkdir()
    for name in ("worker", "frontend", "operator"):
        zmq.auth.create_certificates(str(allow), name)
    acl = tmp_path / "acl.json"
    acl.write_text(json.dumps({"worker": ["*"], "operator": ["@manage"]}))
    public = {
        name: zmq.auth.load_certificate(str(allow / f"{name}.key"))[0].decode()
        for name in ("worker", "frontend", "operator")
    }
    ring = KeyRing(allow, acl)
    ring.load()
    h = Harness(heartbeat_interval=10.0)
    h.engine.attach(KeyAdmission(ring, check_interval=100.0, now=h.now), None)
    frames = [W02, b"\x01", SVC.encode(), pack({"worker_id": "A"})]
    assert h.send(b"wa", frames, key=public["worker"]) == []
    return h, public


@pytest.mark.parametrize("peer", ["worker", "frontend"])
def test_only_the_operator_key_may_drain(curve_harness, peer):
    h, public = curve_harness
    for service in ("mmi.drain", "mmi.resume"):
        reply = _manage(h, service, "A", key=public[peer], client=peer.encode())
        assert reply["header"]["code"] == "forbidden"
        assert "management permission" in reply["header"]["msg"]
    assert h.status()["workers"][0]["draining"] is False
    assert h.status()["counters"]["management_refused"] == 2
    reply = _manage(h, "mmi.drain", "A", key=public["operator"])
    assert reply["body"]["state"] == "drained"


def test_the_manage_permission_does_not_let_a_key_register(curve_harness):
    h, public = curve_harness
    out = h.send(b"op", [W02, b"\x01", b"@manage"], key=public["operator"])
    assert out == [(b"op", [W02, W_DISCONNECT])]
    assert [w["id"] for w in h.status()["workers"]] == ["A"]
