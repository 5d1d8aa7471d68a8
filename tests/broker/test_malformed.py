"""Malformed and hostile messages against a live broker process: what needs real sockets.

libzmq's own size limit, the broker's total-size answer, a registered worker process that
breaks the protocol while holding a request, the warning log lines, and a hypothesis test
that feeds random multipart messages to the live socket. Every single bad-input case is
tested on the core in-process (``test_engine_peers.py``).
"""

from __future__ import annotations

import time

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mole.broker.shell import ANSWERED_OVERSIZE_FACTOR
from tests.broker.brokerfix import Bus, wait_until, wait_workers, workers_of
from tests.support.peers import pack, unpack

pytestmark = pytest.mark.timeout(180)

MAX_BYTES = 65536
GOOD = "good"
DISCONNECT = [b"MDPW02", b"\x06"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A broker with a 64 KiB message limit and one raw worker of ``good`` with 2 slots."""
    bus = Bus(tmp_path_factory.mktemp("malformed"))
    broker = bus.broker("--max-message-bytes", str(MAX_BYTES))
    client = bus.client(broker.endpoint)
    bus.worker(broker.endpoint, GOOD, slots=2, worker_id="w-good")
    wait_workers(client, GOOD, 1)
    yield bus, broker, client
    bus.close()


def _peer(url: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    return sock


def _recv_command(sock: zmq.Socket, timeout: float = 5.0) -> list[bytes]:
    """The next message to a worker socket other than the broker's HEARTBEATs."""
    end = time.monotonic() + timeout
    while sock.poll(max(0, int((end - time.monotonic()) * 1000))):
        frames = sock.recv_multipart()
        if frames != [b"MDPW02", b"\x05"]:
            return frames
    raise TimeoutError("no message from the broker")


def _assert_healthy(client) -> dict:
    """The broker still routes correctly and the good worker has both slots free."""
    reply = client.call(GOOD, {"still": "alive"}, ttl_ms=10_000)
    assert reply.ok
    assert reply.payload["echo"] == {"still": "alive"}
    status = client.status()
    [row] = [w for w in status["workers"] if w["service"] == GOOD]
    assert row["slots"] == 2
    assert row["in_flight"] == 0
    assert status["services"][GOOD]["in_flight"] == 0
    assert status["counters"]["internal_errors"] == 0
    return status


def test_a_request_too_big_in_total_is_answered_bad_request_naming_the_limit(live):
    """Frames under ZMQ_MAXMSGSIZE each, over the broker's limit together: the broker
    itself refuses it, with an answer, so the client does not wait to its deadline."""
    _bus, broker, client = live
    before = client.status()["counters"]["oversized"]
    peer = _peer(broker.endpoint)
    header = pack({"v": 1, "id": "r2"})
    peer.send_multipart([b"MDPC02", b"\x01", b"good", header, b"a" * 40_000, b"b" * 40_000])
    assert peer.poll(5000)
    reply = peer.recv_multipart()
    assert reply[:3] == [b"MDPC02", b"\x03", b"good"]
    body = unpack(reply[3])
    assert (body["id"], body["code"]) == ("r2", "bad_request")
    assert "exceeds the broker's limit of 65536 bytes" in body["msg"]
    peer.close(0)
    assert client.status()["counters"]["oversized"] == before + 1
    _assert_healthy(client)


def test_one_frame_over_the_limit_is_answered_too(live):
    """A single frame over the broker's limit (within libzmq's larger cap) is answered."""
    _bus, broker, client = live
    peer = _peer(broker.endpoint)
    header = pack({"v": 1, "id": "r3"})
    peer.send_multipart([b"MDPC02", b"\x01", b"good", header, b"x" * (MAX_BYTES + 1)])
    assert peer.poll(5000)
    reply = peer.recv_multipart()
    body = unpack(reply[3])
    assert (body["id"], body["code"]) == ("r3", "bad_request")
    assert f"limit of {MAX_BYTES} bytes" in body["msg"]
    peer.close(0)
    _assert_healthy(client)


def test_a_frame_beyond_the_socket_cap_drops_that_connection_only(live):
    _bus, broker, client = live
    peer = _peer(broker.endpoint)
    huge = b"x" * (MAX_BYTES * ANSWERED_OVERSIZE_FACTOR + 1)
    peer.send_multipart([b"MDPC02", b"\x01", b"good", huge])
    assert not peer.poll(500)  # ZMQ_MAXMSGSIZE: libzmq cut the peer before the broker saw it
    peer.close(0)
    _assert_healthy(client)


def test_registered_worker_breaking_protocol_is_purged_and_its_request_redispatched(live):
    """One case over real sockets and a worker process; every kind of breach is in
    test_engine_peers.py."""
    garbage = [b"not", b"mdp"]
    bus, broker, client = live
    service = "svc-hold"
    bad = _peer(broker.endpoint)
    bad.send_multipart([b"MDPW02", b"\x01", service.encode()])
    wait_workers(client, service, 1, heartbeat_from=(bad,))
    rid = client.send(service, "keep me", ttl_ms=20_000)
    assert _recv_command(bad)[1] == b"\x02"  # it holds the request now
    helper = bus.worker(broker.endpoint, service, worker_id="w-helper")
    wait_workers(client, service, 2, heartbeat_from=(bad,))  # bad must outlive the start
    bad.send_multipart(garbage)
    assert _recv_command(bad) == DISCONNECT
    bad.close(0)
    reply = client.recv_final(10)
    assert reply is not None
    assert reply.ok
    assert reply.request_id == rid
    assert reply.payload["worker"] == "w-helper"
    [row] = workers_of(client, service)
    assert row["id"] == "w-helper"
    assert row["in_flight"] == 0
    helper.kill()
    helper.wait(5)
    wait_workers(client, service, 0)
    _assert_healthy(client)


def test_malformed_messages_are_logged_at_warning(bus):
    broker = bus.broker()
    client = bus.client(broker.endpoint)
    peer = _peer(broker.endpoint)
    peer.send_multipart([b"garbage", b"frames"])
    peer.send_multipart([b"MDPW02", b"\x09"])
    assert wait_until(lambda: client.status()["counters"]["malformed"] == 2, 5)
    peer.close(0)
    assert wait_until(lambda: "WARNING mole.broker: unreadable message from" in broker.log(), 5)
    assert "WARNING mole.broker: protocol violation by worker" in broker.log()
    assert "b'garbage'" in broker.log()


# --------------------------------------------------------------------------- fuzzing

_headers = st.sampled_from([b"MDPC02", b"MDPW02", b"MDPC01", b""]) | st.binary(max_size=8)
_commands = st.sampled_from([bytes([i]) for i in range(8)]) | st.binary(max_size=3)
_services = st.sampled_from([b"fuzz", b"mmi.service", b"mmi.status", b"mmi.x", b""]) | st.binary(
    max_size=12
).filter(lambda b: b != GOOD.encode())
_header_maps = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 2]), "id": st.text(max_size=8) | st.integers(-5, 5)},
    optional={
        "ttl": st.integers(-(2**63), 2**64 - 1) | st.text(max_size=3) | st.none(),
        "attempt": st.integers(-(2**63), 2**63 - 1) | st.booleans(),
        "ok": st.booleans(),
    },
)
_int64 = st.integers(-(2**63), 2**63 - 1)
_body_frames = (
    st.binary(max_size=64)
    | _header_maps.map(pack)
    | st.dictionaries(st.text(max_size=4), _int64, max_size=3).map(pack)
)
_messages = st.tuples(
    _headers, _commands, _services, st.lists(_body_frames, max_size=4), st.integers(1, 8)
).map(lambda t: [t[0], t[1], t[2], *t[3]][: t[4]])


def test_random_multipart_messages_never_break_the_broker(live):
    _bus, broker, client = live
    peers = [_peer(broker.endpoint) for _ in range(4)]
    started = time.monotonic()

    @settings(
        max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(st.lists(st.tuples(st.integers(0, len(peers) - 1), _messages), min_size=1, max_size=5))
    def feed(batch):
        if time.monotonic() - started > 8:  # keep the run bounded on a loaded machine
            return
        for which, frames in batch:
            peers[which].send_multipart(frames)

    feed()
    for peer in peers:
        peer.close(0)
    assert broker.proc.poll() is None
    status = _assert_healthy(client)
    assert status["counters"]["malformed"] > 0
