"""The broker core with every Majordomo peer and with bad input, in-process (fake clock).

MDP/0.1 frames are written from RFC 7, 0.2 from RFC 18; the 0.2-behind-a-delimiter
framing is RFC 18's frames after one empty frame (REQ sockets, majortomo).
"""

from __future__ import annotations

import pytest

from mole.protocol import mdp
from tests.broker.engine_support import (
    C01,
    C02,
    FINAL_C,
    PARTIAL_C,
    READY,
    REQUEST,
    W01,
    W01_DISCONNECT,
    W01_HEARTBEAT,
    W01_READY,
    W01_REPLY,
    W01_REQUEST,
    W02,
    W_DISCONNECT,
    W_FINAL,
    W_HEARTBEAT,
    W_PARTIAL,
    W_REQUEST,
    Harness,
    dispatched,
    header,
    only,
    pack,
    reply_header,
    unpack,
)

SVC = "echo"


# --------------------------------------------------------------------------- MDP/0.1


def test_mdp01_worker_registers_gets_requests_and_replies_in_its_framing():
    h = Harness()
    assert h.send(b"w01", [b"", W01, W01_READY, SVC.encode()]) == []
    [row] = h.status()["workers"]
    assert (row["service"], row["slots"], row["protocol"]) == (SVC, 1, "MDP01")
    worker, frames = only(h.send(b"c", [C02, REQUEST, SVC.encode(), b"hello"]))
    assert worker == b"w01"
    assert frames[:3] == [b"", W01, W01_REQUEST]
    ticket = frames[3]
    assert frames[4:] == [b"", b"hello"]
    client, reply = only(h.send(b"w01", [b"", W01, W01_REPLY, ticket, b"", b"HELLO"]))
    assert (client, reply) == (b"c", [C02, FINAL_C, SVC.encode(), b"HELLO"])


def test_mdp01_worker_gets_heartbeats_and_disconnect_in_its_framing():
    h = Harness()
    h.send(b"w01", [b"", W01, W01_READY, SVC.encode()])
    assert only(h.advance(1.0)) == (b"w01", [b"", W01, W01_HEARTBEAT])
    assert h.send(b"w01", [b"", W01, W01_HEARTBEAT]) == []
    out = h.advance(3.5)
    assert (b"w01", [b"", W01, W01_DISCONNECT]) in out


def test_mdp01_client_is_answered_in_mdp01():
    h = Harness()
    h.ready(b"w", SVC)
    [(_, ticket, body)] = dispatched(h.send(b"req", [b"", C01, SVC.encode(), b"ping"]))
    assert body == [b"ping"]
    client, frames = only(h.send(b"w", [W02, W_FINAL, ticket, b"", b"pong"]))
    assert (client, frames) == (b"req", [b"", C01, SVC.encode(), b"pong"])


def test_mdp01_client_gets_no_partials_but_its_final():
    h = Harness()
    h.ready(b"w", SVC)
    [(_, ticket, _)] = dispatched(h.send(b"req", [b"", C01, SVC.encode(), b"ping"]))
    assert h.send(b"w", [W02, W_PARTIAL, ticket, b"", b"part"]) == []
    assert h.status()["counters"]["partials_dropped"] == 1
    assert only(h.send(b"w", [W02, W_FINAL, ticket, b"", b"done"]))[1][-1] == b"done"


def test_mdp01_client_errors_come_in_its_framing():
    h = Harness(default_deadline=1.0)
    h.send(b"req", [b"", C01, b"nobody", b"ping"])
    _client, frames = only(h.advance(1.0))
    assert frames[:3] == [b"", C01, b"nobody"]
    assert unpack(frames[3])["error"] == "no_worker"


def test_mdp01_mmi_service():
    h = Harness()
    h.ready(b"w", SVC)
    _, frames = only(h.send(b"req", [b"", C01, b"mmi.service", SVC.encode()]))
    assert frames == [b"", C01, b"mmi.service", b"200"]


# --------------------------------------------------------------------------- 0.2 + delimiter


def test_delimited_02_client_and_worker_are_answered_with_the_delimiter():
    h = Harness()
    assert h.send(b"wd", [b"", W02, READY, SVC.encode()]) == []
    worker, frames = only(h.send(b"cd", [b"", C02, REQUEST, SVC.encode(), b"x"]))
    assert worker == b"wd"
    assert frames[:3] == [b"", W02, W_REQUEST]
    ticket = frames[3]
    assert frames[4:] == [b"", b"x"]
    _, partial = only(h.send(b"wd", [b"", W02, W_PARTIAL, ticket, b"", b"p"]))
    assert partial == [b"", C02, PARTIAL_C, SVC.encode(), b"p"]
    _, final = only(h.send(b"wd", [b"", W02, W_FINAL, ticket, b"", b"f"]))
    assert final == [b"", C02, FINAL_C, SVC.encode(), b"f"]
    assert only(h.advance(1.0)) == (b"wd", [b"", W02, W_HEARTBEAT])


# --------------------------------------------------------------------------- replies


def test_bodyless_final_reaches_the_client_with_one_empty_body_frame():
    h = Harness()
    h.ready(b"w", SVC)
    [(_, ticket, _)] = dispatched(h.send(b"c", [C02, REQUEST, SVC.encode(), b"x"]))
    _, frames = only(h.send(b"w", [W02, W_FINAL, ticket, b""]))
    assert frames == [C02, FINAL_C, SVC.encode(), b""]
    assert h.status()["counters"]["bodyless_replies"] == 1


def test_bodyless_partial_reaches_the_client_with_one_empty_body_frame():
    h = Harness()
    h.ready(b"w", SVC)
    [(_, ticket, _)] = dispatched(h.send(b"c", [C02, REQUEST, SVC.encode(), b"x"]))
    _, frames = only(h.send(b"w", [W02, W_PARTIAL, ticket, b""]))
    assert frames == [C02, PARTIAL_C, SVC.encode(), b""]


def test_plain_worker_reply_to_our_request_is_marked_raw_with_the_request_id():
    h = Harness()
    h.ready(b"plain", SVC)  # no metadata frame: a plain RFC 18 worker
    [(_, ticket, _)] = dispatched(h.request(b"c", SVC, "r-9", {"text": "x"}))
    _, frames = only(h.send(b"plain", [W02, W_FINAL, ticket, b"", b"HELLO", b"second"]))
    assert frames[:3] == [C02, FINAL_C, SVC.encode()]
    assert unpack(frames[3]) == {"v": 1, "id": "r-9", "ok": True, "raw": True}
    assert frames[4:] == [b"HELLO", b"second"]
    assert h.status()["counters"]["raw_replies"] == 1


def test_a_reply_with_our_header_is_forwarded_untouched_and_worker_errors_counted():
    h = Harness()
    h.ready(b"w", SVC)
    [(_, ticket, _)] = dispatched(h.request(b"c", SVC, "r1"))
    err = pack({"v": 1, "id": "r1", "ok": False, "code": "bad_request", "msg": "no text"})
    _, frames = only(h.send(b"w", [W02, W_FINAL, ticket, b"", err]))
    assert frames[3] == err
    assert h.status()["counters"]["errors_by_code"] == {"bad_request": 1}
    assert h.status()["services"][SVC]["errors"] == 1


def test_only_a_reply_header_saying_ok_false_counts_as_a_worker_error():
    # the engine decodes a reply header only when it holds msgpack's false byte (0xc2):
    # a successful reply whose id or extra field holds that byte is still a success
    h = Harness()
    h.ready(b"w", SVC, slots=3)
    tickets = [ticket for _, ticket, _ in dispatched(h.request(b"c", SVC, "r1"))]
    tickets += [ticket for _, ticket, _ in dispatched(h.request(b"c", SVC, "r\u00a2"))]
    tickets += [ticket for _, ticket, _ in dispatched(h.request(b"c", SVC, "r3"))]
    ok_with_false = pack({"v": 1, "id": "r1", "ok": True, "cached": False})
    ok_cent = pack({"v": 1, "id": "r\u00a2", "ok": True})  # UTF-8 of U+00A2 is c2 a2
    failed = pack({"v": 1, "id": "r3", "ok": False, "code": "internal", "retry": False})
    assert b"\xc2" in ok_with_false  # the cases this test is about
    assert b"\xc2" in ok_cent
    for ticket, reply in zip(tickets, [ok_with_false, ok_cent, failed], strict=True):
        _, frames = only(h.send(b"w", [W02, W_FINAL, ticket, b"", reply]))
        assert frames[3] == reply  # forwarded untouched
    assert h.status()["counters"]["errors_by_code"] == {"internal": 1}
    assert h.status()["services"][SVC]["errors"] == 1
    assert h.status()["services"][SVC]["served"] == 3


# --------------------------------------------------------------------------- bad input


CLIENT_ANSWERED = {
    "FINAL sent by a client": [C02, FINAL_C, b"good", b"x"],
    "unknown client command": [C02, b"\x09", b"good", b"x"],
    "REQUEST without body": [C02, REQUEST, b"good"],
    "service not UTF-8": [C02, REQUEST, b"\xff\xfe", b"x"],
    "service too long": [C02, REQUEST, b"s" * 300, b"x"],
    "0.1 request without body": [b"", C01, b"good"],
}


@pytest.mark.parametrize("frames", CLIENT_ANSWERED.values(), ids=CLIENT_ANSWERED.keys())
def test_unreadable_client_message_with_a_service_gets_an_error_reply(frames):
    h = Harness()
    client, reply = only(h.send(b"c", frames))
    assert client == b"c"
    start = 1 if frames[0] == b"" else 0
    body = unpack(reply[-1])
    assert body["error"] == "bad_request"
    assert body["message"].startswith("the broker cannot read this request")
    assert reply[start] == frames[start]  # same protocol header back
    assert h.status()["counters"]["unreadable"] == 1


SILENT = {
    "one junk frame": [b"junk"],
    "one empty frame": [b""],
    "random frames": [b"\x00\xff\x00", b"\x01", b"good", b"x"],
    "MDP/0.1 header without its empty frame": [C01, b"good", b"x"],
    "header only": [C02],
    "no service frame": [C02, REQUEST],
}


@pytest.mark.parametrize("frames", SILENT.values(), ids=SILENT.keys())
def test_unreadable_message_without_a_protocol_to_answer_in_is_counted(frames):
    h = Harness()
    assert h.send(b"c", frames) == []
    assert h.status()["counters"]["malformed"] == 1


WORKER_VIOLATIONS = {
    "worker header only": [W02],
    "unknown worker command": [W02, b"\x09"],
    "READY without service": [W02, READY],
    "READY for mmi.service": [W02, READY, b"mmi.service"],
    "READY metadata not msgpack": [W02, READY, b"svc-x", b"\xc1\xc1"],
    "READY metadata not a map": [W02, READY, b"svc-x", pack([1, 2])],
    "READY zero slots": [W02, READY, b"svc-x", pack({"slots": 0})],
    "READY too many slots": [W02, READY, b"svc-x", pack({"slots": 10**6})],
    "READY with two extra frames": [W02, READY, b"svc-x", pack({}), b"more"],
    "READY with a NUL in the name": [W02, READY, b"bad\x00name"],
    "READY with a blank name": [W02, READY, b"   "],
    "READY with a newline in the name": [W02, READY, b"a\nb"],
    "HEARTBEAT with extra frames": [W02, W_HEARTBEAT, b"extra"],
    "FINAL without empty frame": [W02, W_FINAL, b"ticket"],
    "FINAL with empty client": [W02, W_FINAL, b"", b"", b"body"],
    "REQUEST sent by a worker": [W02, W_REQUEST, b"x", b"", b"y"],
}


@pytest.mark.parametrize("frames", WORKER_VIOLATIONS.values(), ids=WORKER_VIOLATIONS.keys())
def test_worker_protocol_violation_gets_disconnect_and_registers_nothing(frames):
    h = Harness()
    assert only(h.send(b"bad", frames)) == (b"bad", [W02, W_DISCONNECT])
    assert h.status()["workers"] == []
    assert h.status()["counters"]["malformed"] == 1


def test_mdp01_worker_violation_gets_an_mdp01_disconnect():
    h = Harness()
    assert only(h.send(b"bad", [b"", W01, b"\x07"])) == (b"bad", [b"", W01, W01_DISCONNECT])


def test_bad_service_names_are_counted():
    h = Harness()
    h.send(b"bad", [W02, READY, b"x\x00"])
    _, frames = only(h.send(b"c", [C02, REQUEST, b"\t\t", header("r"), pack(1)]))
    reply = unpack(frames[3])
    assert (reply["id"], reply["code"]) == ("r", "bad_request")
    assert "blank" in reply["msg"]
    assert h.status()["counters"]["bad_service_names"] == 2


@pytest.mark.parametrize(
    "garbage",
    [[W02, READY, SVC.encode()], [W02, b"\x09"], [W02, W_FINAL, b"ticket"]],
    ids=["READY twice", "unknown command", "short FINAL"],
)
def test_a_registered_worker_breaking_the_protocol_is_purged_and_its_request_redispatched(
    garbage,
):
    h = Harness()
    h.ready(b"bad", SVC)
    [(_, ticket, _)] = dispatched(h.request(b"c", SVC, "keep"))
    h.ready(b"good", SVC)
    out = h.send(b"bad", garbage)
    assert (b"bad", [W02, W_DISCONNECT]) in out
    [(worker, again, _)] = dispatched(out)
    assert (worker, again) == (b"good", ticket)
    assert [w["identity"] for w in h.status()["workers"]] == [b"good".hex()]
    assert h.status()["counters"]["protocol_errors"] == 1


def test_bad_header_field_types_get_bad_request():
    h = Harness()
    h.ready(b"w", SVC)
    bad = pack({"v": 1, "id": "r1", "ttl": "soon"})
    _, frames = only(h.send(b"c", [C02, REQUEST, SVC.encode(), bad, pack(1)]))
    reply = unpack(frames[3])
    assert (reply["id"], reply["code"]) == ("r1", "bad_request")
    assert "must be integers" in reply["msg"]


def test_oversized_client_request_gets_bad_request_naming_the_limit():
    h = Harness(max_message_bytes=1000)
    head = [C02, REQUEST, SVC.encode(), reply_header("big"), b"x" * 100]
    h.engine.on_oversized(b"c", head, 5000, h.now)
    out = h._record()
    _, frames = only(out)
    reply = unpack(frames[3])
    assert (reply["id"], reply["code"]) == ("big", "bad_request")
    assert "5000 bytes exceeds the broker's limit of 1000" in reply["msg"]
    assert h.status()["counters"]["oversized"] == 1


def test_oversized_worker_message_is_a_violation():
    h = Harness(max_message_bytes=1000)
    h.ready(b"w", SVC)
    h.engine.on_oversized(b"w", [W02, W_FINAL, b"t", b""], 5000, h.now)
    out = h._record()
    assert out == [(b"w", [W02, W_DISCONNECT])]
    assert h.status()["workers"] == []


def test_unreachable_worker_gives_its_request_to_another_without_an_attempt():
    h = Harness()
    h.ready(b"gone", SVC)
    h.ready(b"there", SVC)
    # the shell reports a failed send of a dispatch back with the request it carried
    frames = [C02, REQUEST, SVC.encode(), header("r1"), pack(1)]
    mdp.read_inbound(frames, h.engine, b"c", h.now, None)
    [(identity, _frames, req)] = h.engine.take_outgoing()
    assert identity == b"gone"
    h.engine.on_unreachable(b"gone", req, h.now)
    out = h._record()
    [(worker, _, body)] = dispatched(out)
    assert worker == b"there"
    assert unpack(body[0])["attempt"] == 0  # the failed send was not an attempt
