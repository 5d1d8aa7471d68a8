"""CURVE on the broker: allow-listed keys only, and a worker bound to the key it registered
with (another allowed key taking its routing id over through ROUTER_HANDOVER is cut off)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time

import pytest
import zmq
import zmq.auth

from tests.broker.brokerfix import SILENT_WORKER_KEPT
from tests.support.peers import ROOT, child_env, pack, unpack
from tests.support.procs import must_wait

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE"),
]


@pytest.fixture
def keys(tmp_path):
    keydir, allow = tmp_path / "keys", tmp_path / "allow"
    keydir.mkdir()
    allow.mkdir()
    for name in ("broker", "worker", "client", "intruder"):
        zmq.auth.create_certificates(str(keydir), name)
    for name in ("worker", "client"):
        shutil.copy(keydir / f"{name}.key", allow / f"{name}.key")
    return keydir, allow


def _socket(url: str, keydir, name: str | None, identity: bytes | None = None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    if name:
        server_public, _ = zmq.auth.load_certificate(str(keydir / "broker.key"))
        public, secret = zmq.auth.load_certificate(str(keydir / f"{name}.key_secret"))
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
            server_public,
            public,
            secret,
        )
    sock.connect(url)
    return sock


def _ask_status(sock: zmq.Socket, timeout_ms: int = 1500) -> dict | None:
    sock.send_multipart([b"MDPC02", b"\x01", b"mmi.status", pack({"v": 1, "id": "s"}), pack({})])
    if not sock.poll(timeout_ms):
        return None
    return unpack(sock.recv_multipart()[4])


def test_only_allow_listed_keys_get_through(bus, keys):
    keydir, allow = keys
    broker = bus.broker(
        "--curve-secret",
        str(keydir / "broker.key_secret"),
        "--curve-allow",
        str(allow),
        *SILENT_WORKER_KEPT,
        probe=False,
    )
    url = broker.endpoint
    worker = _socket(url, keydir, "worker", identity=b"W1")
    worker.send_multipart([b"MDPW02", b"\x01", b"secure", pack({"slots": 1})])
    client = _socket(url, keydir, "client")
    status = must_wait(
        lambda: (st := _ask_status(client)) and st["workers"] and st, "the worker to register"
    )
    [row] = status["workers"]
    public_worker, _ = zmq.auth.load_certificate(str(keydir / "worker.key"))
    assert row["curve_key"] == public_worker.decode()

    client.send_multipart(
        [b"MDPC02", b"\x01", b"secure", pack({"v": 1, "id": "r1"}), pack("secret text")]
    )
    frames = [b"MDPW02", b"\x05"]
    while frames[1] == b"\x05":
        assert worker.poll(5000)
        frames = worker.recv_multipart()
    assert frames[1] == b"\x02"
    worker.send_multipart([b"MDPW02", b"\x04", frames[2], b"", frames[4], frames[5]])
    assert client.poll(5000)
    assert unpack(client.recv_multipart()[4]) == "secret text"

    # neither a key outside the allow-list nor a plain socket gets an answer
    assert _ask_status(_socket(url, keydir, "intruder"), 1000) is None
    assert _ask_status(_socket(url, keydir, None), 1000) is None
    for sock in (worker, client):
        sock.close(0)


def _wait_registered(sock: zmq.Socket, count: int = 1) -> dict:
    """The broker's status once exactly ``count`` workers are registered."""
    status: dict = must_wait(
        lambda: (st := _ask_status(sock)) and len(st["workers"]) == count and st,
        f"{count} worker(s) to register",
    )
    return status


def test_a_connected_workers_routing_id_cannot_be_taken_over(bus, keys):
    """ROUTER_HANDOVER is off under CURVE: a second connection under W1 is refused."""
    keydir, allow = keys
    broker = bus.broker(
        "--curve-secret",
        str(keydir / "broker.key_secret"),
        "--curve-allow",
        str(allow),
        *SILENT_WORKER_KEPT,
        probe=False,
    )
    url = broker.endpoint
    worker = _socket(url, keydir, "worker", identity=b"W1")
    worker.send_multipart([b"MDPW02", b"\x01", b"secure"])
    status_sock = _socket(url, keydir, "client")
    _wait_registered(status_sock)
    imposter = _socket(url, keydir, "client", identity=b"W1")
    imposter.send_multipart([b"MDPW02", b"\x05"])
    status_sock.send_multipart(
        [b"MDPC02", b"\x01", b"secure", pack({"v": 1, "id": "r1"}), pack("for W1 only")]
    )
    frames = [b"MDPW02", b"\x05"]
    while frames[1] == b"\x05":
        assert worker.poll(5000)
        frames = worker.recv_multipart()
    assert frames[1] == b"\x02"
    assert unpack(frames[5]) == "for W1 only"
    assert not imposter.poll(500)  # the imposter's connection was refused: it gets nothing
    worker.send_multipart([b"MDPW02", b"\x04", frames[2], b"", frames[4], frames[5]])
    assert status_sock.poll(5000)
    assert unpack(status_sock.recv_multipart()[4]) == "for W1 only"
    assert (
        _ask_status(status_sock)["workers"][0]["curve_key"]
        == zmq.auth.load_certificate(str(keydir / "worker.key"))[0].decode()
    )
    for sock in (worker, status_sock, imposter):
        sock.close(0)


def test_worker_registration_is_bound_to_its_key(bus, keys):
    """W1 leaves; another allowed key connects under W1 before the purge: cut off."""
    keydir, allow = keys
    broker = bus.broker(
        "--curve-secret",
        str(keydir / "broker.key_secret"),
        "--curve-allow",
        str(allow),
        *SILENT_WORKER_KEPT,
        probe=False,
    )
    url = broker.endpoint
    worker = _socket(url, keydir, "worker", identity=b"W1")
    worker.send_multipart([b"MDPW02", b"\x01", b"secure"])
    status_sock = _socket(url, keydir, "client")
    _wait_registered(status_sock)
    worker.close(0)  # gone, but registered until the broker's expiry (15 s)
    # let the broker's libzmq drop W1's connection first: with ROUTER_HANDOVER off, a
    # connection under a routing id still in use is refused (and never retried)
    time.sleep(0.5)
    imposter = _socket(url, keydir, "client", identity=b"W1")
    got = None
    for _ in range(75):  # the refused first try is retried by libzmq (reconnect_ivl)
        with contextlib.suppress(zmq.Again):
            imposter.send_multipart([b"MDPW02", b"\x05"], flags=zmq.NOBLOCK)
        if imposter.poll(200):
            got = imposter.recv_multipart()
            if got == [b"MDPW02", b"\x06"]:
                break
    assert got == [b"MDPW02", b"\x06"]
    status = _ask_status(status_sock)
    assert status["workers"] == []
    assert status["counters"]["protocol_errors"] == 1
    assert "another CURVE key" in broker.log()
    for sock in (status_sock, imposter):
        sock.close(0)


def test_missing_key_file_is_a_clear_error(bus, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mole.broker",
            "--bind",
            "tcp://127.0.0.1:*",
            "--curve-secret",
            str(tmp_path / "nope.key_secret"),
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "cannot load the broker's CURVE key" in result.stderr
