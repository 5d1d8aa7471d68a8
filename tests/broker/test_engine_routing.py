"""The broker core in-process with a fake clock: routing, queues, deadlines, heartbeats,
expiry, re-dispatch, de-duplication, MMI and drain. Frames are written from RFC 18."""

from __future__ import annotations

from mole.protocol.envelope import pack as _pack
from tests.broker.engine_support import (
    C02,
    FINAL_C,
    HEARTBEAT,
    LIVENESS,
    PARTIAL_C,
    REQUEST,
    W02,
    W_DISCONNECT,
    W_FINAL,
    W_HEARTBEAT,
    W_PARTIAL,
    Harness,
    dispatched,
    only,
    pack,
    reply_header,
    unpack,
)

SVC = "llama-2-7b-hf"


def _final(h: Harness, worker: bytes, ticket: bytes, rid: str, payload: object = "ok") -> list:
    return h.send(worker, [W02, W_FINAL, ticket, b"", reply_header(rid), pack(payload)])


def test_request_goes_to_the_worker_and_its_final_back_to_the_client():
    h = Harness()
    h.ready(b"w1", SVC, slots=2)
    [(worker, ticket, body)] = dispatched(h.request(b"c1", SVC, "r1", {"text": "hi"}))
    assert worker == b"w1"
    assert ticket != b"c1"  # an opaque ticket of the broker's, not the client's id
    assert unpack(body[0])["id"] == "r1"
    assert unpack(body[1]) == {"text": "hi"}
    client, frames = only(_final(h, b"w1", ticket, "r1", {"label": "4"}))
    assert client == b"c1"
    assert frames[:3] == [C02, FINAL_C, SVC.encode()]
    assert unpack(frames[3]) == {"v": 1, "id": "r1", "ok": True}
    assert unpack(frames[4]) == {"label": "4"}
    status = h.status()
    assert status["services"][SVC] == {
        "workers": 1,
        "slots": 2,
        "in_flight": 0,
        "queue_depth": 0,
        "served": 1,
        "errors": 0,
    }
    assert status["counters"]["requests"] == 1
    assert status["counters"]["replies"] == 1


def test_partials_are_forwarded_and_only_the_first_final_counts():
    h = Harness()
    h.ready(b"w1", SVC)
    [(_, ticket, _)] = dispatched(h.request(b"c1", SVC, "r1"))
    _, frames = only(h.send(b"w1", [W02, W_PARTIAL, ticket, b"", reply_header("r1"), pack(1)]))
    assert frames[:3] == [C02, PARTIAL_C, SVC.encode()]
    assert len(_final(h, b"w1", ticket, "r1")) == 1
    assert _final(h, b"w1", ticket, "r1") == []  # a second FINAL for the ticket is late
    assert h.status()["counters"]["late_replies"] == 1


def test_slots_weight_the_round_robin():
    h = Harness()
    h.ready(b"big", SVC, slots=3)
    h.ready(b"small", SVC, slots=1)
    targets = [dispatched(h.request(b"c", SVC, f"r{i}"))[0][0] for i in range(4)]
    assert sorted(targets) == [b"big", b"big", b"big", b"small"]
    assert h.request(b"c", SVC, "r4") == []  # all four slots busy: queued
    assert h.status()["services"][SVC]["queue_depth"] == 1
    assert h.status()["services"][SVC]["in_flight"] == 4


def test_a_queued_request_goes_out_when_a_slot_frees_with_its_remaining_ttl():
    h = Harness()
    h.ready(b"w1", SVC)
    [(_, t1, _)] = dispatched(h.request(b"c1", SVC, "r1", ttl_ms=10_000))
    assert h.request(b"c2", SVC, "r2", ttl_ms=10_000) == []
    h.now += 4.0
    out = _final(h, b"w1", t1, "r1")
    [(worker, _t2, body)] = dispatched(out)
    assert worker == b"w1"
    sent_header = unpack(body[0])
    assert sent_header["id"] == "r2"
    assert 5_900 <= sent_header["ttl"] <= 6_000  # 10 s less the 4 s it waited
    assert h.status()["services"][SVC]["queue_depth"] == 0


def test_queue_limit_answers_overloaded():
    h = Harness(queue_limit=1)
    h.ready(b"w1", SVC)
    h.request(b"c", SVC, "r1")
    assert h.request(b"c", SVC, "r2") == []
    _client, frames = only(h.request(b"c", SVC, "r3"))
    reply = unpack(frames[3])
    assert (reply["id"], reply["ok"], reply["code"]) == ("r3", False, "overloaded")
    assert "queue limit" in reply["msg"]


def test_no_worker_by_the_deadline_is_answered_no_worker():
    h = Harness()
    assert h.request(b"c", "nobody", "r1", ttl_ms=500) == []
    assert h.advance(0.4) == []
    _, frames = only(h.advance(0.2))
    reply = unpack(frames[3])
    assert reply["code"] == "no_worker"
    assert "nobody" in reply["msg"]
    assert "nobody" not in h.status()["services"]  # an invented name leaves no entry


def test_a_busy_worker_past_the_deadline_gives_deadline_exceeded_and_keeps_its_slot_a_while():
    h = Harness(release_grace=5.0, heartbeat_interval=10.0)
    h.ready(b"w1", SVC)
    [(_, ticket, _)] = dispatched(h.request(b"c", SVC, "r1", ttl_ms=1000))
    h.send(b"w1", [W02, b"\x05"])
    _, frames = only(h.advance(1.1))
    assert unpack(frames[3])["code"] == "deadline_exceeded"
    assert h.status()["workers"][0]["in_flight"] == 1  # the late reply may still come
    h.send(b"w1", [W02, b"\x05"])
    assert _final(h, b"w1", ticket, "r1") == []  # it did, and is dropped
    assert h.status()["workers"][0]["in_flight"] == 0
    assert h.status()["counters"]["late_replies"] == 1


def test_held_slot_is_freed_after_the_grace_when_no_reply_comes():
    h = Harness(release_grace=2.0, heartbeat_interval=10.0)
    h.ready(b"w1", SVC)
    dispatched(h.request(b"c", SVC, "r1", ttl_ms=1000))
    h.advance(1.1)
    h.request(b"c", SVC, "r2", ttl_ms=60_000)  # queued behind the held slot
    out = h.advance(2.0)
    [(worker, _, body)] = dispatched(out)
    assert (worker, unpack(body[0])["id"]) == (b"w1", "r2")


def test_heartbeats_go_out_every_interval_and_a_silent_worker_is_purged():
    h = Harness()
    h.ready(b"w1", SVC)
    assert only(h.advance(HEARTBEAT)) == (b"w1", [W02, W_HEARTBEAT])
    out = h.advance(HEARTBEAT * LIVENESS)
    assert (b"w1", [W02, W_DISCONNECT]) in out
    assert h.status()["workers"] == []
    assert h.status()["counters"]["workers_purged"] == 1


def test_any_worker_message_keeps_it_alive():
    h = Harness()
    h.ready(b"w1", SVC)
    for _ in range(10):
        h.advance(HEARTBEAT)
        h.send(b"w1", [W02, W_HEARTBEAT])
    assert [w["id"] for w in h.status()["workers"]] == ["7731"]


def test_a_purged_workers_request_is_redispatched_with_the_next_attempt_number():
    h = Harness()
    h.ready(b"w1", SVC)
    [(_, first, _)] = dispatched(h.request(b"c", SVC, "r1", ttl_ms=60_000))
    h.ready(b"w2", SVC)
    h.advance(HEARTBEAT)
    h.send(b"w2", [W02, W_HEARTBEAT])
    h.advance(HEARTBEAT)
    h.send(b"w2", [W02, W_HEARTBEAT])
    out = h.advance(HEARTBEAT * 1.5)  # w1 has been silent for 3.5 s > 3 s
    [(worker, ticket, body)] = dispatched(out)
    assert worker == b"w2"
    assert ticket == first  # the same ticket: a late reply from w1 is recognised
    assert unpack(body[0])["attempt"] == 1
    assert h.status()["counters"]["redispatched"] == 1
    _, frames = only(_final(h, b"w2", ticket, "r1", "from w2"))
    assert unpack(frames[4]) == "from w2"


def test_a_redispatched_header_keeps_every_key_the_client_wrote():
    h = Harness()
    h.ready(b"w1", SVC)
    own = pack({"v": 1, "id": "r1", "ttl": 60_000, "attempt": 0, "trace": "t-9", "n": 7})
    h.send(b"c", [C02, REQUEST, SVC.encode(), own, pack("p")])
    h.ready(b"w2", SVC)
    h.send(b"w1", [W02, W_DISCONNECT])  # w1 leaves holding r1: it goes to w2
    [(worker, _ticket, body)] = dispatched(h.sent)[1:]
    assert worker == b"w2"
    assert unpack(body[0]) == {
        "v": 1,
        "id": "r1",
        "ttl": 60_000,
        "attempt": 1,
        "trace": "t-9",
        "n": 7,
    }


def test_max_attempts_turns_a_lost_request_into_worker_lost():
    h = Harness(max_attempts=1)
    h.ready(b"w1", SVC)
    dispatched(h.request(b"c", SVC, "r1", ttl_ms=60_000))
    out = h.send(b"w1", [W02, b"\x06"])  # DISCONNECT
    _, frames = only(out)
    reply = unpack(frames[3])
    assert reply["code"] == "worker_lost"
    assert "1 attempt(s)" in reply["msg"]


def test_a_resent_request_is_not_done_twice_while_the_first_copy_lives():
    h = Harness()
    h.ready(b"w1", SVC, slots=4)
    assert len(dispatched(h.request(b"c", SVC, "same"))) == 1
    assert h.request(b"c", SVC, "same") == []
    assert h.status()["counters"]["duplicates"] == 1
    assert len(dispatched(h.request(b"other-client", SVC, "same"))) == 1  # keyed per client


def test_unregistered_worker_messages_get_disconnect():
    h = Harness()
    assert only(h.send(b"ghost", [W02, W_HEARTBEAT])) == (b"ghost", [W02, W_DISCONNECT])
    assert only(h.send(b"ghost", [W02, W_FINAL, b"t", b"", b"x"]))[1] == [W02, W_DISCONNECT]
    assert h.status()["counters"]["unknown_worker_messages"] == 2


def test_mmi_service_status_and_unknown():
    h = Harness()
    h.ready(b"w1", SVC)
    _, frames = only(h.send(b"c", [C02, REQUEST, b"mmi.service", SVC.encode()]))
    assert frames == [C02, FINAL_C, b"mmi.service", b"200"]
    _, frames = only(h.send(b"c", [C02, REQUEST, b"mmi.service", b"nope"]))
    assert frames[3] == b"404"
    _, frames = only(h.send(b"c", [C02, REQUEST, b"mmi.nothing", b"x"]))
    assert frames[3] == b"501"
    _, frames = only(h.send(b"c", [C02, REQUEST, b"mmi.status", reply_header("s"), _pack({})]))
    assert unpack(frames[3])["id"] == "s"
    assert unpack(frames[4])["workers"][0]["service"] == SVC


def test_opaque_rfc18_body_gets_the_default_deadline_and_an_opaque_error():
    h = Harness(default_deadline=2.0)
    assert h.send(b"c", [C02, REQUEST, b"x-svc", b"plain body"]) == []
    _, frames = only(h.advance(2.0))
    assert frames[:3] == [C02, FINAL_C, b"x-svc"]
    assert unpack(frames[3])["error"] == "no_worker"


def test_drain_refuses_new_requests_and_serves_those_in_flight():
    h = Harness()
    h.ready(b"w1", SVC)
    [(_, ticket, _)] = dispatched(h.request(b"c", SVC, "r1"))
    h.engine.begin_drain(h.now)
    assert not h.engine.drained()
    _, frames = only(h.request(b"c", SVC, "r2"))
    assert unpack(frames[3])["code"] == "no_worker"
    assert "shutting down" in unpack(frames[3])["msg"]
    assert len(_final(h, b"w1", ticket, "r1")) == 1
    assert h.engine.drained()
    assert h.status()["counters"]["refused_while_draining"] == 1
    assert h.status()["broker"]["draining"] is True


def test_shutdown_disconnects_workers_and_answers_what_is_left():
    h = Harness()
    h.ready(b"w1", SVC)
    h.request(b"c", SVC, "r1")
    h.request(b"c", SVC, "r2")
    h.engine.shutdown(h.now)
    out = h._record()
    assert (b"w1", [W02, W_DISCONNECT]) in out
    codes = sorted(unpack(f[3])["code"] for who, f in out if who == b"c")
    assert codes == ["no_worker", "worker_lost"]


def test_dispatch_stays_constant_work_with_many_workers():
    """10,000 registered workers on other services do not change what one request does."""
    h = Harness()
    for i in range(10_000):
        h.ready(f"w{i}".encode(), f"svc-{i}")
    h.ready(b"target", SVC)
    [(worker, ticket, _)] = dispatched(h.request(b"c", SVC, "r1"))
    assert worker == b"target"
    assert len(_final(h, b"target", ticket, "r1")) == 1


def test_invented_service_names_do_not_accumulate():
    h = Harness()
    for i in range(20):
        _, frames = only(h.request(b"c", f"invented-now-{i}", f"a{i}", ttl_ms=0))
        assert unpack(frames[3])["code"] == "deadline_exceeded"
    for i in range(20):
        assert h.request(b"c", f"invented-soon-{i}", f"b{i}", ttl_ms=50) == []
    codes = [unpack(frames[3])["code"] for _, frames in h.advance(0.05)]
    assert codes == ["no_worker"] * 20
    assert h.status()["services"] == {}


def test_the_shell_learns_of_a_timer_a_message_set_sooner_than_it_planned():
    h = Harness()
    h.engine.take_wake_hint()
    h.request(b"c", "nobody-yet", "r1", ttl_ms=50)
    assert h.engine.take_wake_hint() == h.now + 0.05  # the deadline
    assert h.engine.take_wake_hint() == float("inf")  # told once
    assert h.engine.next_timer(h.now, 10.0) == h.now + 0.05
