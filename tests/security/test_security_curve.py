"""CURVE authentication end to end (hardening issue): real broker and worker processes.

Unknown keys cannot register or receive; a client without a key is refused; key B can
neither answer A's requests nor receive client A's replies; the ACL limits which key may
register which service; a revoked key is cut off within one heartbeat interval while the
others keep being served; and the broker fails closed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.security.conftest import reply, request, status
from tests.support.peers import ROOT, child_env, pack, unpack
from tests.support.procs import must_wait

pytestmark = pytest.mark.timeout(90)


def _log_of(secure, key: str) -> str:
    """What the worker processes started with ``key`` have logged so far."""
    return "".join(p.read_text(errors="replace") for p in secure.tmp.glob(f"worker-{key}-*.log"))


def _workers(secure, service: str | None = None) -> list[dict]:
    st = status(secure.socket("client-a"))
    assert st is not None, "an allow-listed client got no mmi.status answer"
    return [w for w in st["workers"] if service is None or w["service"] == service]


def test_unknown_key_cannot_register_or_receive(secure):
    secure.allow_keys("worker-a", "client-a")
    secure.start()
    intruder = secure.worker("intruder", "svc")  # a real worker process with an unknown key
    secure.worker("worker-a", "other")
    must_wait(lambda: _workers(secure, "other"), "the worker of 'other' to register")
    # The intruder had time to try: it sent READY, heard nothing back within its liveness
    # window and keeps retrying -- a refused worker neither registers nor crashes.
    must_wait(
        lambda: (
            "READY for 'svc' sent" in _log_of(secure, "intruder")
            and "broker silent" in _log_of(secure, "intruder")
        ),
        "the intruder's liveness window to run out",
        timeout=30,
    )
    assert intruder.poll() is None, _log_of(secure, "intruder")
    assert "Traceback" not in _log_of(secure, "intruder")
    assert _workers(secure, "svc") == []
    # a client request for its service is never handed to it
    client = secure.socket("client-a")
    request(client, "svc", "for nobody", "r1", ttl_ms=800)
    frames = reply(client, 5)
    assert frames is not None
    assert unpack(frames[3])["code"] == "no_worker"
    # nor does an unknown key receive anything as a client
    intruder = secure.socket("intruder")
    assert status(intruder, 1.0) is None
    request(intruder, "other", "hi", "r2")
    assert reply(intruder, 1.0) is None


def test_client_without_a_key_is_refused_and_others_are_served(secure):
    secure.allow_keys("worker-a", "client-a")
    secure.start()
    secure.worker("worker-a", "svc")
    must_wait(lambda: _workers(secure, "svc"), "the worker to register")
    plain = secure.socket(None)
    request(plain, "svc", "no key", "p1")
    assert status(plain, 1.0) is None
    assert reply(plain, 0.5) is None
    client = secure.socket("client-a")
    request(client, "svc", "with key", "k1")
    frames = reply(client, 10)
    assert frames is not None
    assert unpack(frames[4])["echo"] == "with key"


def test_key_b_cannot_answer_or_take_over_a_workers_requests(secure):
    secure.allow_keys("worker-a", "worker-b", "client-a")
    secure.start()
    worker_a = secure.socket("worker-a", identity=b"WA")
    worker_a.send_multipart([b"MDPW02", b"\x01", b"svc"])
    worker_b = secure.socket("worker-b", identity=b"WB")
    worker_b.send_multipart([b"MDPW02", b"\x01", b"busy"])
    must_wait(lambda: len(_workers(secure)) == 2, "both workers to register")
    # B also tries A's routing id: refused while A is connected (no ROUTER_HANDOVER)
    thief = secure.socket("worker-b", identity=b"WA")
    thief.send_multipart([b"MDPW02", b"\x05"])
    client = secure.socket("client-a")
    request(client, "svc", "for A", "r1")
    frames = [b"MDPW02", b"\x05"]
    while frames[1] == b"\x05":
        assert worker_a.poll(5000)
        frames = worker_a.recv_multipart()
    ticket = frames[2]
    assert frames[1] == b"\x02"
    assert not thief.poll(300), "key B received a request sent to A's routing id"
    # B answers with A's ticket: not B's request, dropped
    worker_b.send_multipart(
        [
            b"MDPW02",
            b"\x04",
            ticket,
            b"",
            pack({"v": 1, "id": "r1", "ok": True}),
            pack("forged by B"),
        ]
    )
    assert reply(client, 0.5) is None
    worker_a.send_multipart([b"MDPW02", b"\x04", ticket, b"", frames[4], pack("from A")])
    frames = reply(client, 5)
    assert frames is not None
    assert unpack(frames[4]) == "from A"
    st = status(client)
    assert st["counters"]["late_replies"] >= 1
    assert {w["service"]: w["curve_key"] for w in st["workers"]} == {
        "svc": secure.public("worker-a"),
        "busy": secure.public("worker-b"),
    }


def test_key_b_cannot_receive_client_a_replies(secure):
    secure.allow_keys("worker-a", "client-a", "client-b")
    secure.start()
    secure.worker("worker-a", "svc", delay=0.8)
    must_wait(lambda: _workers(secure, "svc"), "the worker to register")
    client_a = secure.socket("client-a", identity=b"CLIENT-A")
    request(client_a, "svc", "private to A", "a1")
    must_wait(lambda: _workers(secure, "svc")[0]["in_flight"] == 1, "the worker to hold a1")
    # B takes A's routing id without sending anything (the ROUTER_HANDOVER attack) ...
    silent = secure.socket("client-b", identity=b"CLIENT-A")
    # ... and another B connection with it sends a request too
    loud = secure.socket("client-b", identity=b"CLIENT-A")
    request(loud, "svc", "B under A's id", "b1")
    frames = reply(client_a, 10)
    assert frames is not None
    assert unpack(frames[4])["echo"] == "private to A"
    assert silent.poll(1000) == 0
    assert loud.poll(10) == 0
    # A keeps being served on the same connection
    request(client_a, "svc", "again", "a2")
    frames = reply(client_a, 10)
    assert frames is not None
    assert unpack(frames[4])["echo"] == "again"
    assert silent.poll(10) == 0
    assert loud.poll(10) == 0


def test_acl_limits_which_key_registers_which_service(secure):
    secure.allow_keys("worker-a", "worker-b", "client-a")
    acl = secure.tmp / "acl.json"
    acl.write_text(
        json.dumps({"worker-a": ["svc", "gpu/*"], secure.public("worker-b"): ["shared"]})
    )
    secure.start("--curve-acl", str(acl))
    allowed = [
        ("worker-a", b"A1", "svc"),
        ("worker-a", b"A2", "gpu/qwen"),
        ("worker-b", b"B1", "shared"),
    ]
    denied = [
        ("worker-a", b"A3", "other"),
        ("worker-b", b"B2", "svc"),
        ("client-a", b"C1", "svc"),
    ]  # a key the ACL does not name serves nothing
    socks = {}
    for key, identity, service in allowed + denied:
        socks[identity] = secure.socket(key, identity=identity)
        socks[identity].send_multipart([b"MDPW02", b"\x01", service.encode()])
    for _key, identity, _service in denied:
        assert socks[identity].poll(5000), f"{identity} got no DISCONNECT"
        assert socks[identity].recv_multipart() == [b"MDPW02", b"\x06"]
    registered = must_wait(
        lambda: (ws := _workers(secure)) and len(ws) == 3 and ws, "the three workers to register"
    )
    assert sorted(w["service"] for w in registered) == ["gpu/qwen", "shared", "svc"]
    log = secure.broker.log()
    assert "worker-a.key may not register 'other'" in log
    assert "client-a.key may not register 'svc'" in log
    assert "key_secret" not in log.replace(str(secure.keys / "broker.key_secret"), "")
    # clients need no ACL entry to ask
    client = secure.socket("client-a")
    request(client, "shared", "hello", "c1")
    assert socks[b"B1"].poll(5000)
    frames = socks[b"B1"].recv_multipart()
    assert frames[1] == b"\x02"


@pytest.mark.timing
def test_revoked_key_is_cut_off_within_one_heartbeat(secure):
    interval = 1.0
    secure.allow_keys("worker-a", "worker-b", "client-a", "client-b")
    secure.start(heartbeat=interval)
    secure.worker("worker-a", "svc", heartbeat=interval)
    secure.worker("worker-b", "svc", heartbeat=interval)
    must_wait(lambda: len(_workers(secure, "svc")) == 2, "both workers of svc to register")
    client_a = secure.socket("client-a")
    client_b = secure.socket("client-b")
    request(client_b, "svc", "before", "b0")
    assert reply(client_b, 10) is not None

    (secure.allow / "worker-a.key").unlink()
    (secure.allow / "client-b.key").unlink()
    revoked_at = time.monotonic()
    must_wait(
        lambda: [w["curve_key"] for w in _workers(secure, "svc")] == [secure.public("worker-b")],
        "only worker B to stay registered",
        timeout=10,
        interval=0.02,
    )
    took = time.monotonic() - revoked_at
    assert took <= interval + 0.75, f"worker-a cut off after {took:.2f}s"
    # the revoked worker process reconnects and is refused; B keeps serving A's client
    for i in range(4):
        request(client_a, "svc", f"after {i}", f"a{i}")
        frames = reply(client_a, 10)
        assert frames is not None
        assert unpack(frames[4])["worker_id"].startswith("worker-b")
        time.sleep(interval / 2)
    assert [w["curve_key"] for w in _workers(secure, "svc")] == [secure.public("worker-b")]
    # the revoked client's connection is still open in libzmq, but it gets nothing
    request(client_b, "svc", "after", "b1")
    assert reply(client_b, 1.5) is None
    assert "worker-a.key) was removed from the allow-list" in secure.broker.log()


def test_revoked_workers_request_is_redispatched(secure):
    interval = 0.5
    secure.allow_keys("worker-a", "worker-b", "client-a")
    secure.start(heartbeat=interval)
    secure.worker("worker-a", "svc", delay=4.0, heartbeat=interval)
    must_wait(lambda: _workers(secure, "svc"), "worker A to register")
    client = secure.socket("client-a")
    request(client, "svc", "held by A", "r1")
    must_wait(lambda: _workers(secure, "svc")[0]["in_flight"] == 1, "worker A to hold the request")
    secure.worker("worker-b", "svc", heartbeat=interval)
    must_wait(lambda: len(_workers(secure, "svc")) == 2, "worker B to register")
    (secure.allow / "worker-a.key").unlink()
    frames = reply(client, 3.5)  # well before A's 4 s would have answered
    assert frames is not None
    answer = unpack(frames[4])
    assert answer["echo"] == "held by A"
    assert answer["worker_id"].startswith("worker-b")
    assert answer["attempt"] >= 1
    st = status(client)
    assert st["counters"]["curve_revoked_workers"] == 1
    assert st["counters"]["redispatched"] == 1


@pytest.mark.timing
def test_acl_change_cuts_off_a_worker_within_one_heartbeat(secure):
    interval = 0.5
    secure.allow_keys("worker-a", "client-a")
    acl = secure.tmp / "acl.json"
    acl.write_text(json.dumps({"worker-a": ["svc", "gpu/*"]}))
    secure.start("--curve-acl", str(acl), heartbeat=interval)
    secure.worker("worker-a", "svc", heartbeat=interval)
    secure.worker("worker-a", "gpu/x", heartbeat=interval)
    must_wait(lambda: len(_workers(secure)) == 2, "both workers to register")
    acl.write_text(json.dumps({"worker-a": ["svc"]}))
    changed_at = time.monotonic()
    must_wait(
        lambda: [w["service"] for w in _workers(secure)] == ["svc"],
        "the worker of the service taken away to be purged",
        timeout=10,
        interval=0.02,
    )
    assert time.monotonic() - changed_at <= interval + 0.75
    must_wait(  # it reconnects and is refused again
        lambda: status(secure.socket("client-a"))["counters"]["curve_refused"] >= 1,
        "the cut-off worker's new READY to be refused",
    )
    assert [w["service"] for w in _workers(secure)] == ["svc"]
    assert "may no longer register 'gpu/x' (ACL)" in secure.broker.log()


def test_revoked_client_gets_no_pending_reply(secure):
    interval = 0.5
    secure.allow_keys("worker-a", "client-a", "client-b")
    secure.start(heartbeat=interval)
    secure.worker("worker-a", "svc", delay=2.0, heartbeat=interval)
    must_wait(lambda: _workers(secure, "svc"), "the worker to register")
    client_b = secure.socket("client-b")
    request(client_b, "svc", "slow", "b1")
    must_wait(lambda: _workers(secure, "svc")[0]["in_flight"] == 1, "the worker to hold b1")
    (secure.allow / "client-b.key").unlink()
    assert reply(client_b, 4.0) is None  # the worker answered after ~2 s: dropped
    client_a = secure.socket("client-a")
    request(client_a, "svc", "still served", "a1")
    frames = reply(client_a, 10)
    assert frames is not None
    assert unpack(frames[4])["echo"] == "still served"


def test_empty_allow_list_lets_nobody_in(secure):
    secure.start()
    assert "EMPTY allow-list" in secure.broker.log()
    secure.worker("worker-a", "svc")
    for key in ("client-a", "worker-a", None):
        assert status(secure.socket(key), 1.0) is None
    # adding a key later admits that key (and only it), within a heartbeat interval
    secure.allow_keys("client-a")
    st = must_wait(
        lambda: status(secure.socket("client-a"), 0.5),
        "the broker to answer a status request",
        timeout=10,
    )
    assert st["workers"] == []


def _broker_exit(secure, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mole.broker",
            "--bind",
            "tcp://127.0.0.1:*",
            "--curve-secret",
            str(secure.keys / "broker.key_secret"),
            *flags,
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    "case",
    [
        "bad key file",
        "public key as secret",
        "bad acl json",
        "bad acl shape",
        "acl without allow",
        "missing allow dir",
    ],
)
def test_broker_fails_closed_on_bad_configuration(secure, case):
    secure.allow_keys("worker-a")
    acl = secure.tmp / "acl.json"
    if case == "bad key file":
        (secure.allow / "broken.key").write_text("not a certificate\n")
        result, expect = (
            _broker_exit(secure, "--curve-allow", str(secure.allow)),
            "bad CURVE public key file",
        )
    elif case == "public key as secret":
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "mole.broker",
                "--bind",
                "tcp://127.0.0.1:*",
                "--curve-secret",
                str(secure.keys / "broker.key"),
            ],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        expect = "holds no secret key"
    elif case == "bad acl json":
        acl.write_text("{not json")
        result = _broker_exit(secure, "--curve-allow", str(secure.allow), "--curve-acl", str(acl))
        expect = "is not valid JSON"
    elif case == "bad acl shape":
        acl.write_text(json.dumps({"worker-a": "svc"}))
        result = _broker_exit(secure, "--curve-allow", str(secure.allow), "--curve-acl", str(acl))
        expect = "must be a list"
    elif case == "acl without allow":
        acl.write_text("{}")
        result, expect = _broker_exit(secure, "--curve-acl", str(acl)), "needs an allow-list"
    else:
        result = _broker_exit(secure, "--curve-allow", str(secure.tmp / "nowhere"))
        expect = "is not a directory"
    assert result.returncode == 2, result.stderr
    assert expect in result.stderr


def test_peer_with_only_one_key_variable_is_a_clear_error(secure):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mole.worker.echo",
            "--broker",
            "tcp://127.0.0.1:9",
            "--service",
            "svc",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(MOLE_CURVE_SERVER_KEY=str(secure.keys / "broker.key")),
    )
    assert result.returncode == 2
    assert "MOLE_CURVE_SECRET_KEY is not set" in result.stderr
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mole",
            "status",
            "--broker",
            "tcp://127.0.0.1:9",
            "--curve-server-key",
            str(secure.keys / "broker.key"),
            "--curve-secret-key",
            str(secure.keys / "client-a.key"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    assert result.returncode == 2
    assert "holds no secret key" in result.stderr


def test_mole_status_with_keys(secure):
    secure.allow_keys("client-a")
    secure.start()
    base = [
        sys.executable,
        "-m",
        "mole",
        "status",
        "--broker",
        secure.url,
        "--json",
        "--timeout",
        "5",
    ]
    ok = subprocess.run(
        base,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(
            MOLE_CURVE_SERVER_KEY=str(secure.keys / "broker.key"),
            MOLE_CURVE_SECRET_KEY=str(secure.keys / "client-a.key_secret"),
        ),
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["broker"]["endpoint"]
    refused = subprocess.run(
        [*base[:-1], "1"], cwd=ROOT, capture_output=True, text=True, timeout=30, env=child_env()
    )
    assert refused.returncode == 1
    assert "CURVE" in refused.stderr


def test_frontend_dispatcher_uses_curve_keys_from_env(secure, monkeypatch):
    from types import SimpleNamespace

    from mole.frontend.dispatch import BrokerDispatcher
    from mole.protocol.curve import CurveKeyError

    secure.allow_keys("worker-a", "client-a")
    secure.start()
    secure.worker("worker-a", "svc")
    must_wait(lambda: _workers(secure, "svc"), "the worker to register")
    monkeypatch.setenv("MOLE_CURVE_SERVER_KEY", str(secure.keys / "broker.key"))
    monkeypatch.setenv("MOLE_CURVE_SECRET_KEY", str(secure.keys / "client-a.key_secret"))
    dispatcher = BrokerDispatcher(secure.url, default_timeout=10)

    async def use() -> tuple[Any, dict[str, Any]]:
        try:
            expert = SimpleNamespace(base_model_key="svc")
            reply = await dispatcher.dispatch(expert, {"text": "hi"}, timeout=10)
            return reply, await dispatcher.status(timeout=5)
        finally:
            await dispatcher.close()

    reply, status = asyncio.run(use())
    assert reply["echo"] == {"text": "hi"}
    assert status["workers"][0]["curve_key"] == secure.public("worker-a")
    monkeypatch.delenv("MOLE_CURVE_SECRET_KEY")
    with pytest.raises(CurveKeyError, match="MOLE_CURVE_SECRET_KEY is not set"):
        BrokerDispatcher(secure.url)  # a half-configured frontend fails at start-up
