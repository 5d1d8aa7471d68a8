"""Per-attempt timeouts and suspect workers on the core, in-process with a fake clock.

A worker that keeps heartbeating but never answers must not hold a request to its
deadline: after the attempt timeout the request also goes to another free worker, the
first final answer wins, and a worker timing out repeatedly gets no new work.
"""

from __future__ import annotations

import pytest

from mole.broker.settings import SettingsError, parse_service_timeouts
from tests.broker.engine_support import (
    W02,
    W_FINAL,
    W_HEARTBEAT,
    Harness,
    dispatched,
    only,
    pack,
    reply_header,
    unpack,
)

SVC = "llama-2-7b-hf"


def _beat(h: Harness, *workers: bytes) -> None:
    for worker in workers:
        h.send(worker, [W02, W_HEARTBEAT])


def _final(h: Harness, worker: bytes, ticket: bytes, rid: str, payload: object = "ok") -> list:
    return h.send(worker, [W02, W_FINAL, ticket, b"", reply_header(rid), pack(payload)])


def test_a_silent_attempt_goes_to_another_worker_and_its_answer_wins():
    h = Harness(attempt_timeout=2.0, heartbeat_interval=10.0)
    h.ready(b"hung", SVC)
    [(first, ticket, _)] = dispatched(h.request(b"c", SVC, "r1", ttl_ms=60_000))
    assert first == b"hung"
    h.ready(b"good", SVC)
    assert dispatched(h.advance(1.9)) == []
    [(second, again, body)] = dispatched(h.advance(0.2))
    assert (second, again) == (b"good", ticket)
    assert unpack(body[0])["attempt"] == 1
    client, frames = only(_final(h, b"good", ticket, "r1", "from good"))
    assert (client, unpack(frames[4])) == (b"c", "from good")
    # the hung worker's answer, if it ever comes, is dropped and counted
    assert _final(h, b"hung", ticket, "r1", "too late") == []
    counters = h.status()["counters"]
    assert counters["attempt_timeouts"] == 1
    assert counters["redispatched_after_timeout"] == 1
    assert counters["duplicate_finals_dropped"] == 1
    assert counters["replies"] == 1


def test_the_first_attempt_may_still_win():
    h = Harness(attempt_timeout=1.0, heartbeat_interval=10.0)
    h.ready(b"slow", SVC)
    [(_, ticket, _)] = dispatched(h.request(b"c", SVC, "r1", ttl_ms=60_000))
    h.ready(b"other", SVC)
    assert dispatched(h.advance(1.0))[0][0] == b"other"
    assert len(_final(h, b"slow", ticket, "r1", "slow won")) == 1
    assert _final(h, b"other", ticket, "r1") == []
    assert h.status()["counters"]["duplicate_finals_dropped"] == 1


def test_without_another_free_worker_the_request_stays_and_goes_out_when_one_frees():
    h = Harness(attempt_timeout=1.0, heartbeat_interval=10.0, suspect_after=5)
    h.ready(b"hung", SVC)
    h.ready(b"busy", SVC)
    [(_, ticket, _)] = dispatched(h.request(b"c", SVC, "r1", ttl_ms=60_000))
    [(busy, busy_ticket, _)] = dispatched(h.request(b"c", SVC, "r2", ttl_ms=60_000))
    assert busy == b"busy"
    assert dispatched(h.advance(1.0)) == []  # nobody free: r1 keeps waiting on "hung"
    assert h.status()["counters"]["attempt_timeouts"] == 2
    _final(h, b"busy", busy_ticket, "r2")
    [(worker, again, _)] = dispatched(h.advance(1.0))  # looked at again later
    assert (worker, again) == (b"busy", ticket)
    assert h.status()["counters"]["attempt_timeouts"] == 2  # a second look is no new timeout


def test_attempts_stop_at_max_attempts():
    h = Harness(attempt_timeout=1.0, heartbeat_interval=10.0, max_attempts=2, suspect_after=9)
    for name in (b"a", b"b", b"c"):
        h.ready(name, SVC)
    [(first, _ticket, _)] = dispatched(h.request(b"cl", SVC, "r1", ttl_ms=60_000))
    [(second, _, _)] = dispatched(h.advance(1.0))
    assert first != second
    assert dispatched(h.advance(1.0)) == []  # two attempts out: no third
    assert h.status()["services"][SVC]["in_flight"] == 2


def test_a_worker_timing_out_repeatedly_is_suspect_until_it_answers():
    h = Harness(attempt_timeout=1.0, heartbeat_interval=10.0, suspect_after=2)
    h.ready(b"hung", SVC, slots=4)
    hung_tickets = [dispatched(h.request(b"c", SVC, "r1", ttl_ms=60_000))[0][1]]
    h.ready(b"good", SVC, slots=4)

    def serve_good(out: list) -> None:
        for worker, ticket, body in dispatched(out):
            if worker == b"good":
                _final(h, b"good", ticket, unpack(body[0])["id"])
            else:
                hung_tickets.append(ticket)

    serve_good(h.advance(1.0))  # r1 timed out on "hung" (1st) and went to "good"
    status = {w["identity"]: w for w in h.status()["workers"]}
    assert status[b"hung".hex()]["attempt_timeouts"] == 1
    assert status[b"hung".hex()]["suspect"] is False
    for i in range(2):  # round robin still gives "hung" new work
        serve_good(h.request(b"c", SVC, f"x{i}", ttl_ms=60_000))
    assert len(hung_tickets) == 2
    serve_good(h.advance(1.0))  # x0 timed out on "hung" too (2nd in a row)
    status = {w["identity"]: w for w in h.status()["workers"]}
    assert status[b"hung".hex()]["suspect"] is True
    assert status[b"good".hex()]["suspect"] is False
    assert h.status()["counters"]["workers_suspected"] == 1
    for i in range(4):
        out = h.request(b"c", SVC, f"y{i}", ttl_ms=60_000)
        assert [w for w, _, _ in dispatched(out)] == [b"good"]  # no new work for "hung"
        serve_good(out)
    _final(h, b"hung", hung_tickets[0], "r1")  # it answers (late): trusted again
    status = {w["identity"]: w for w in h.status()["workers"]}
    assert status[b"hung".hex()]["suspect"] is False
    assert status[b"hung".hex()]["attempt_timeouts"] == 0
    targets = {w for i in range(4) for w, _, _ in dispatched(h.request(b"c", SVC, f"z{i}"))}
    assert b"hung" in targets


def test_purging_one_holder_leaves_the_request_with_the_other():
    h = Harness(attempt_timeout=1.0, heartbeat_interval=10.0, suspect_after=9)
    h.ready(b"a", SVC)
    [(_, ticket, _)] = dispatched(h.request(b"c", SVC, "r1", ttl_ms=60_000))
    h.ready(b"b", SVC)
    h.advance(1.0)  # now on "a" and "b"
    out = h.send(b"a", [W02, b"\x06"])  # "a" leaves
    assert dispatched(out) == []  # not re-queued: "b" still holds it
    assert h.status()["counters"]["redispatched"] == 0
    assert len(_final(h, b"b", ticket, "r1")) == 1


def test_the_default_attempt_timeout_is_a_share_of_the_deadline():
    h = Harness(heartbeat_interval=100.0, max_attempts=3)
    h.ready(b"a", SVC)
    dispatched(h.request(b"c", SVC, "r1", ttl_ms=30_000))
    h.ready(b"b", SVC)
    assert dispatched(h.advance(9.9)) == []
    assert dispatched(h.advance(0.2))[0][0] == b"b"  # 30 s / 3 attempts


def test_per_service_attempt_timeouts_by_name_and_prefix():
    h = Harness(heartbeat_interval=100.0, service_attempt_timeouts="exact=1.5,gpu/*=3")
    assert h.engine._new_service(b"exact").attempt_timeout == 1.5
    assert h.engine._new_service(b"gpu/qwen").attempt_timeout == 3.0
    assert h.engine._new_service(b"other").attempt_timeout is None  # derived
    assert parse_service_timeouts(" a=1 , b*=2.5 ") == {"a": 1.0, "b*": 2.5}
    with pytest.raises(SettingsError, match="NAME=SECONDS"):
        parse_service_timeouts("a=0")
    with pytest.raises(SettingsError, match="NAME=SECONDS"):
        parse_service_timeouts("justaname")


def test_a_late_start_clock_does_not_make_the_first_tick_walk_from_zero():
    """Buckets are counted from the engine's start, not from the clock's zero."""
    h = Harness(attempt_timeout=1.0, heartbeat_interval=10.0)
    h.now = 1e9  # a monotonic clock of a machine up for decades
    h.engine = type(h.engine)(h.settings, h.now)
    h.ready(b"a", SVC)
    dispatched(h.request(b"c", SVC, "r1", ttl_ms=60_000))
    h.ready(b"b", SVC)
    assert dispatched(h.advance(1.0))[0][0] == b"b"
