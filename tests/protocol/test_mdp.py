"""RFC 18 framing: every command round-trips, every malformed message is MalformedMessage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mole.protocol import mdp
from mole.protocol.errors import MalformedMessage
from mole.protocol.mdp import ClientCommand, WorkerCommand

SERVICE = "unsloth/mistral-7b-instruct-v0.3-bnb-4bit"


@pytest.mark.parametrize("command", list(ClientCommand))
def test_client_commands_round_trip(command):
    body = [b"header", b"payload", b""]
    frames = mdp.encode_client(command, SERVICE, body)
    assert frames[:3] == [b"MDPC02", bytes([command]), SERVICE.encode()]
    message = mdp.decode_client(frames)
    assert (message.command, message.service, message.body) == (command, SERVICE, body)


def test_client_command_bytes_are_rfc18():
    assert [bytes([c]) for c in ClientCommand] == [b"\x01", b"\x02", b"\x03"]
    assert mdp.CLIENT_REQUEST == b"\x01"
    assert mdp.CLIENT_FINAL == b"\x03"


def test_client_final_without_body_is_allowed_but_request_is_not():
    assert mdp.decode_client([b"MDPC02", b"\x03", b"svc"]).body == []
    with pytest.raises(MalformedMessage, match="without a body"):
        mdp.decode_client([b"MDPC02", b"\x01", b"svc"])


def test_worker_ready_with_and_without_metadata():
    plain = mdp.encode_worker(WorkerCommand.READY, service=SERVICE)
    assert plain == [b"MDPW02", b"\x01", SERVICE.encode()]
    message = mdp.decode_worker(plain)
    assert message.command == WorkerCommand.READY
    assert message.service == SERVICE
    assert message.metadata is None
    extended = mdp.encode_worker(WorkerCommand.READY, service="s", metadata=b"\x80")
    assert mdp.decode_worker(extended).metadata == b"\x80"


@pytest.mark.parametrize(
    "command", [WorkerCommand.REQUEST, WorkerCommand.PARTIAL, WorkerCommand.FINAL]
)
def test_worker_addressed_commands_round_trip(command):
    frames = mdp.encode_worker(command, client=b"ticket-1", body=[b"h", b"p"])
    assert frames == [b"MDPW02", bytes([command]), b"ticket-1", b"", b"h", b"p"]
    message = mdp.decode_worker(frames)
    assert (message.command, message.client, message.body) == (command, b"ticket-1", [b"h", b"p"])


@pytest.mark.parametrize("command", [WorkerCommand.HEARTBEAT, WorkerCommand.DISCONNECT])
def test_worker_bare_commands_round_trip(command):
    frames = mdp.encode_worker(command)
    assert frames == [b"MDPW02", bytes([command])]
    assert mdp.decode_worker(frames).command == command


def test_worker_command_bytes_are_rfc18():
    assert [bytes([c]) for c in WorkerCommand] == [bytes([i]) for i in range(1, 7)]


CLIENT_MALFORMED = {
    "empty": [],
    "two frames": [b"MDPC02", b"\x01"],
    "worker header": [b"MDPW02", b"\x01", b"svc", b"x"],
    "0.1 header": [b"MDPC01", b"\x01", b"svc", b"x"],
    "unknown command": [b"MDPC02", b"\x07", b"svc", b"x"],
    "two-byte command": [b"MDPC02", b"\x01\x01", b"svc", b"x"],
    "empty command": [b"MDPC02", b"", b"svc", b"x"],
    "empty service": [b"MDPC02", b"\x01", b"", b"x"],
    "service not utf-8": [b"MDPC02", b"\x01", b"\xff\xfe", b"x"],
    "service too long": [b"MDPC02", b"\x01", b"s" * 256, b"x"],
    "0.1 empty delimiter layout": [b"", b"MDPC02", b"\x01", b"svc"],
}


@pytest.mark.parametrize("frames", CLIENT_MALFORMED.values(), ids=CLIENT_MALFORMED.keys())
def test_malformed_client_messages(frames):
    with pytest.raises(MalformedMessage):
        mdp.decode_client(frames)


WORKER_MALFORMED = {
    "empty": [],
    "header only": [b"MDPW02"],
    "client header": [b"MDPC02", b"\x05"],
    "unknown command": [b"MDPW02", b"\x00"],
    "command 7": [b"MDPW02", b"\x07"],
    "READY without service": [b"MDPW02", b"\x01"],
    "READY empty service": [b"MDPW02", b"\x01", b""],
    "READY too many frames": [b"MDPW02", b"\x01", b"svc", b"meta", b"more"],
    "READY service not utf-8": [b"MDPW02", b"\x01", b"\xc3\x28"],
    "REQUEST without client": [b"MDPW02", b"\x02"],
    "REQUEST without empty frame": [b"MDPW02", b"\x02", b"client"],
    "REQUEST empty client": [b"MDPW02", b"\x02", b"", b""],
    "REQUEST non-empty delimiter": [b"MDPW02", b"\x02", b"client", b"x", b"body"],
    "PARTIAL without empty frame": [b"MDPW02", b"\x03", b"client"],
    "FINAL empty client": [b"MDPW02", b"\x04", b"", b"", b"body"],
    "HEARTBEAT with a body": [b"MDPW02", b"\x05", b"x"],
    "DISCONNECT with a body": [b"MDPW02", b"\x06", b""],
}


@pytest.mark.parametrize("frames", WORKER_MALFORMED.values(), ids=WORKER_MALFORMED.keys())
def test_malformed_worker_messages(frames):
    with pytest.raises(MalformedMessage):
        mdp.decode_worker(frames)


def test_decoders_accept_zmq_frames_and_memoryviews():
    frames = [memoryview(b"MDPW02"), memoryview(b"\x04"), memoryview(b"t"), b"", b"body"]
    message = mdp.decode_worker(frames)
    assert message.client == b"t"
    assert isinstance(message.client, bytes)


_frame = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"MDPC02", b"MDPW02", b"", *[bytes([i]) for i in range(8)]]),
    st.binary(min_size=250, max_size=300),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_frame, max_size=7))
def test_random_frames_raise_only_malformed_message(frames):
    """Whatever arrives, the parser returns a message or raises MalformedMessage."""
    for decode in (mdp.decode_client, mdp.decode_worker):
        try:
            message = decode(frames)
        except MalformedMessage:
            continue
        assert message.command is not None


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(WorkerCommand)),
    st.text(min_size=1, max_size=40),
    st.binary(min_size=1, max_size=20),
    st.lists(st.binary(max_size=20), max_size=3),
)
def test_worker_encode_decode_is_identity(command, service, client, body):
    service = service if len(service.encode()) <= mdp.MAX_SERVICE_LENGTH else "s"
    frames = mdp.encode_worker(command, service=service, client=client, body=body)
    message = mdp.decode_worker(frames)
    assert message.command == command
    if command == WorkerCommand.READY:
        assert message.service == service
    elif command in (WorkerCommand.REQUEST, WorkerCommand.PARTIAL, WorkerCommand.FINAL):
        assert (message.client, message.body) == (client, body)


# --------------------------------------------------------------------------- the broker's decoder


@pytest.mark.parametrize(
    ("frames", "kind", "framing"),
    [
        ([b"MDPC02", b"\x01", b"svc", b"body"], mdp.ClientRequest, mdp.Framing.MDP02),
        (
            [b"", b"MDPC02", b"\x01", b"svc", b"body"],
            mdp.ClientRequest,
            mdp.Framing.MDP02_DELIMITED,
        ),
        ([b"", b"MDPC01", b"svc", b"body"], mdp.ClientRequest, mdp.Framing.MDP01),
        ([b"MDPW02", b"\x05"], mdp.WorkerEvent, mdp.Framing.MDP02),
        ([b"", b"MDPW02", b"\x01", b"svc"], mdp.WorkerEvent, mdp.Framing.MDP02_DELIMITED),
        ([b"", b"MDPW01", b"\x03", b"client", b"", b"r"], mdp.WorkerEvent, mdp.Framing.MDP01),
    ],
)
def test_decode_inbound_reads_every_framing(frames, kind, framing):
    msg = mdp.decode_inbound(frames)
    assert type(msg) is kind
    assert msg.framing is framing


def test_mdp01_reply_is_a_final_and_mdp01_ready_has_no_metadata():
    reply = mdp.decode_inbound([b"", b"MDPW01", b"\x03", b"client", b"", b"r"])
    assert (reply.command, reply.client, reply.body) == (
        mdp.WorkerCommand.FINAL,
        b"client",
        [b"r"],
    )
    with pytest.raises(mdp.UnreadableMessage) as err:
        mdp.decode_inbound([b"", b"MDPW01", b"\x01", b"svc", b"metadata"])
    assert err.value.role == "worker"
    assert err.value.framing is mdp.Framing.MDP01


def test_to_client_and_to_worker_answer_in_the_peers_framing():
    final = mdp.ClientCommand.FINAL
    assert mdp.to_client(mdp.Framing.MDP01, final, b"s", [b"x"]) == [b"", b"MDPC01", b"s", b"x"]
    assert mdp.to_client(mdp.Framing.MDP01, mdp.ClientCommand.PARTIAL, b"s", [b"x"]) is None
    assert mdp.to_client(mdp.Framing.MDP02_DELIMITED, final, b"s", []) == [
        b"",
        b"MDPC02",
        b"\x03",
        b"s",
        b"",
    ]
    beat = mdp.WorkerCommand.HEARTBEAT
    assert mdp.to_worker(mdp.Framing.MDP01, beat) == [b"", b"MDPW01", b"\x04"]
    assert mdp.to_worker(mdp.Framing.MDP02, mdp.WorkerCommand.REQUEST, b"t", [b"b"]) == [
        b"MDPW02",
        b"\x02",
        b"t",
        b"",
        b"b",
    ]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "blank"),
        ("   ", "blank"),
        ("a\x00b", "U+0000"),
        ("line\nbreak", "U+000A"),
        ("x" * 256, "longer than 255"),
    ],
)
def test_check_service_name_refuses(name, problem):
    assert problem in mdp.check_service_name(name)


@pytest.mark.parametrize(
    "name", ["llama-2-7b-hf", "unsloth/mistral-7b-instruct-v0.3-bnb-4bit", "a b"]
)
def test_check_service_name_accepts(name):
    assert mdp.check_service_name(name) is None


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"", b"MDPC02", b"MDPW02", b"MDPC01", b"MDPW01"]) | st.binary(max_size=6),
        max_size=7,
    )
)
def test_decode_inbound_raises_only_unreadable(frames):
    try:
        mdp.decode_inbound(frames)
    except mdp.UnreadableMessage as err:  # the property: decoded, or refused with a reason
        assert err.reason  # noqa: PT017
