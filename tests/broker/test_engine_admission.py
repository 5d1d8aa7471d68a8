"""The broker core's admission decisions with a real key ring (CURVE key files written by
``zmq.auth`` into a temporary allow-list directory), in-process with a fake clock."""

from __future__ import annotations

import json
import os
import time

import pytest
import zmq.auth

from mole.broker.admission import KeyAdmission
from mole.broker.curve import KeyRing
from tests.broker.engine_support import (
    C02,
    FINAL_C,
    READY,
    W02,
    W_DISCONNECT,
    W_FINAL,
    W_HEARTBEAT,
    Harness,
    dispatched,
    only,
    pack,
    reply_header,
)

SVC = "qwen"


@pytest.fixture
def keys(tmp_path):
    """An allow-list with keys ``worker``, ``client`` and ``other``; an ACL for ``worker``."""
    allow = tmp_path / "allow"
    allow.mkdir()
    for name in ("worker", "client", "other"):
        zmq.auth.create_certificates(str(allow), name)
    acl = tmp_path / "acl.json"
    acl.write_text(json.dumps({"worker": [SVC, "gpu/*"]}))
    public = {
        name: zmq.auth.load_certificate(str(allow / f"{name}.key"))[0].decode()
        for name in ("worker", "client", "other")
    }
    return allow, acl, public


def _harness(keys) -> Harness:
    allow, acl, _ = keys
    ring = KeyRing(allow, acl)
    ring.load()
    h = Harness()
    h.engine.attach(KeyAdmission(ring, check_interval=1.0, now=h.now), None)
    return h


def _revoke(allow, name: str) -> None:
    os.remove(allow / f"{name}.key")
    os.utime(allow, (time.time() + 5, time.time() + 5))  # a new mtime even on coarse clocks


def test_acl_decides_who_may_register_what(keys):
    _, _, public = keys
    h = _harness(keys)
    assert h.send(b"w1", [W02, READY, SVC.encode()], key=public["worker"]) == []
    assert h.send(b"w2", [W02, READY, b"gpu/llama"], key=public["worker"]) == []
    refused = h.send(b"w3", [W02, READY, SVC.encode()], key=public["other"])
    assert refused == [(b"w3", [W02, W_DISCONNECT])]
    assert sorted(w["service"] for w in h.status()["workers"]) == ["gpu/llama", SVC]
    assert h.status()["counters"]["curve_refused"] == 1


def test_a_worker_message_under_another_key_is_a_violation(keys):
    _, _, public = keys
    h = _harness(keys)
    h.send(b"w1", [W02, READY, SVC.encode()], key=public["worker"])
    out = h.send(b"w1", [W02, W_HEARTBEAT], key=public["other"])
    assert out == [(b"w1", [W02, W_DISCONNECT])]
    assert h.status()["workers"] == []


def test_a_reply_goes_only_to_the_key_that_asked(keys):
    _, _, public = keys
    h = _harness(keys)
    h.send(b"w1", [W02, READY, SVC.encode()], key=public["worker"])
    frames = [C02, b"\x01", SVC.encode(), reply_header("r1"), pack(1)]
    [(_, ticket, _)] = dispatched(h.send(b"c", frames, key=public["client"]))
    # another allowed key takes the routing id over before the reply
    h.send(b"c", [C02, b"\x01", b"mmi.service", SVC.encode()], key=public["other"])
    out = h.send(
        b"w1", [W02, W_FINAL, ticket, b"", reply_header("r1"), pack(2)], key=public["worker"]
    )
    assert out == []
    assert h.status()["counters"]["curve_refused"] == 1


def test_removing_a_key_cuts_its_worker_off_and_redispatches_its_request(keys):
    allow, _, public = keys
    h = _harness(keys)
    h.send(b"w1", [W02, READY, SVC.encode()], key=public["worker"])
    h.send(b"w2", [W02, READY, b"other-svc"], key=public["other"])  # no ACL entry: refused
    frames = [C02, b"\x01", SVC.encode(), reply_header("r1"), pack(1)]
    [(worker, _, _)] = dispatched(h.send(b"c", frames, key=public["client"]))
    assert worker == b"w1"
    _revoke(allow, "worker")
    out = h.advance(1.0)
    assert (b"w1", [W02, W_DISCONNECT]) in out
    assert h.status()["workers"] == []
    assert h.status()["counters"]["curve_revoked_workers"] == 1
    assert h.status()["services"][SVC]["queue_depth"] == 1  # waiting for another worker


def test_a_revoked_clients_messages_and_pending_replies_are_dropped(keys):
    allow, _, public = keys
    h = _harness(keys)
    h.send(b"w1", [W02, READY, SVC.encode()], key=public["worker"])
    frames = [C02, b"\x01", SVC.encode(), reply_header("r1"), pack(1)]
    [(_, ticket, _)] = dispatched(h.send(b"c", frames, key=public["client"]))
    _revoke(allow, "client")
    h.advance(1.0)
    assert h.status()["counters"]["live_requests"] == 0  # dropped, unanswered
    assert h.send(b"c", frames, key=public["client"]) == []
    assert h.status()["counters"]["curve_refused"] == 1
    late = h.send(
        b"w1", [W02, W_FINAL, ticket, b"", reply_header("r1"), pack(2)], key=public["worker"]
    )
    assert late == []


def test_without_an_allow_list_keys_are_not_consulted():
    h = Harness()
    h.ready(b"w", SVC)
    _client, frames = only(h.send(b"c", [C02, b"\x01", b"mmi.service", SVC.encode()], key=None))
    assert frames == [C02, FINAL_C, b"mmi.service", b"200"]
