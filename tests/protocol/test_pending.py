"""The clients' shared correlation core, driven directly (no sockets)."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from mole.protocol import mdp
from mole.protocol._pending import Correlator, LinkState, RawReply, decode_payload
from mole.protocol.envelope import ReplyHeader, decode_request_header, error_reply, pack
from mole.protocol.errors import NoWorker


class Recorder:
    def __init__(self):
        self.events = []

    def on_partial(self, body):
        self.events.append(("partial", body))

    def on_final(self, body):
        self.events.append(("final", body))

    def on_error(self, error):
        self.events.append(("error", error))


def _reply(command, rid, *body):
    return (
        [mdp.CLIENT_HEADER, command, b"svc", *body]
        if rid is None
        else [mdp.CLIENT_HEADER, command, b"svc", ReplyHeader(rid).encode(), *body]
    )


def test_frames_carry_remaining_ttl_and_resends_bump_the_attempt():
    core = Correlator("tcp://x:1")
    pending = core.open("svc", [pack(1)], 10.0, Recorder())
    frames = core.frames(pending, now=pending.deadline - 4.0)
    assert frames[:3] == [b"MDPC02", b"\x01", b"svc"]
    header = decode_request_header(frames[3])
    assert (header.request_id, header.ttl_ms, header.attempt) == (pending.request_id, 4000, 0)
    [resent] = core.resend_frames(now=pending.deadline - 1.0)
    header = decode_request_header(resent[3])
    assert (header.ttl_ms, header.attempt) == (1000, 1)
    assert core.resend_frames(now=pending.deadline + 1) == []  # expired: not resent


def test_ids_are_unique():
    core = Correlator("tcp://x:1")
    ids = {core.open("svc", [b""], 1.0, Recorder()).request_id for _ in range(1000)}
    assert len(ids) == 1000


def test_dispatch_partial_final_and_error():
    core = Correlator("tcp://x:1")
    sink = Recorder()
    p = core.open("svc", [pack(1)], 5.0, sink)
    core.dispatch(_reply(mdp.CLIENT_PARTIAL, p.request_id, pack("a")))
    core.dispatch(_reply(mdp.CLIENT_FINAL, p.request_id, pack("b")))
    core.dispatch(_reply(mdp.CLIENT_FINAL, p.request_id, pack("late")))
    assert [(k, decode_payload(v)) for k, v in sink.events] == [("partial", "a"), ("final", "b")]
    assert core.dropped == 1
    assert len(core) == 0
    q = core.open("svc", [pack(1)], 5.0, sink)
    core.dispatch(
        [
            mdp.CLIENT_HEADER,
            mdp.CLIENT_FINAL,
            b"svc",
            *error_reply(q.request_id, "no_worker", "nobody home"),
        ]
    )
    kind, error = sink.events[-1]
    assert kind == "error"
    assert isinstance(error, NoWorker)
    assert error.request_id == q.request_id


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=10),
            st.sampled_from(
                [
                    b"MDPC02",
                    b"\x02",
                    b"\x03",
                    b"\x01",
                    b"svc",
                    pack({"v": 1, "id": "x", "ok": False}),
                ]
            ),
        ),
        max_size=6,
    )
)
def test_dispatch_never_raises_on_junk(frames):
    core = Correlator("tcp://x:1")
    core.dispatch(frames)


def test_deadline_message_says_whether_the_broker_was_reachable():
    link = LinkState("tcp://b:5555")
    assert "never connected" in link.describe()
    assert link.up() is False  # first connection: nothing to resend
    assert "is reachable" in link.describe()
    link.down()
    assert "connection lost" in link.describe(time.monotonic() + 2)
    assert link.up() is True  # a reconnection: resend
    core = Correlator("tcp://b:5555")
    p = core.open("svc", [b""], 0.5, Recorder())
    message = str(core.deadline_error(p))
    assert "'svc'" in message
    assert "0.5 s" in message
    assert "tcp://b:5555" in message


def test_fail_all_ends_every_request_once():
    core = Correlator("tcp://x:1")
    sinks = [Recorder() for _ in range(3)]
    for sink in sinks:
        core.open("svc", [b""], 5.0, sink)
    assert core.fail_all(lambda p: RuntimeError(p.request_id)) == 3
    assert all(len(s.events) == 1 and s.events[0][0] == "error" for s in sinks)
    assert len(core) == 0


def test_a_raw_reply_is_handed_over_as_raw_frames_not_decoded():
    """The broker marks a plain worker's reply with a raw header (written here by hand)."""
    core = Correlator("tcp://x:1")
    sink = Recorder()
    pending = core.open("svc", [pack(1)], 10.0, sink)
    raw_header = pack({"v": 1, "id": pending.request_id, "ok": True, "raw": True})
    core.dispatch([mdp.CLIENT_HEADER, mdp.CLIENT_PARTIAL, b"svc", raw_header, b"part"])
    core.dispatch([mdp.CLIENT_HEADER, mdp.CLIENT_FINAL, b"svc", raw_header, b"\xc1not", b"two"])
    assert [kind for kind, _ in sink.events] == ["partial", "final"]
    partial, final = (body for _, body in sink.events)
    assert decode_payload(partial) == RawReply((b"part",))
    assert decode_payload(final) == RawReply((b"\xc1not", b"two"))
    assert core.dropped == 0


def test_a_reply_of_ours_is_still_decoded():
    core = Correlator("tcp://x:1")
    sink = Recorder()
    pending = core.open("svc", [pack(1)], 10.0, sink)
    core.dispatch(_reply(mdp.CLIENT_FINAL, pending.request_id, pack({"label": "4"})))
    [(kind, body)] = sink.events
    assert kind == "final"
    assert decode_payload(body) == {"label": "4"}
