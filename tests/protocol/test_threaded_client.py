"""SerialClient and PerThreadClient against a raw ROUTER peer, then the real broker.

The same promises as the shared Client: framing and correlation, error codes, deadlines
that say whether the broker was reachable, late replies dropped, a resend with the
remaining ttl after the broker comes back, and (for PerThreadClient) one socket per thread.
"""

from __future__ import annotations

import threading

import pytest
import zmq

from mole.protocol import ClientClosed
from mole.protocol.envelope import pack
from mole.protocol.errors import DeadlineExceeded, Overloaded, UnknownService
from mole.protocol.threaded import PerThreadClient, SerialClient
from tests.protocol.busprocs import Procs
from tests.protocol.fakebroker import FakeBroker, echo, error, final
from tests.support.procs import free_port, must_wait, wait_until
from tests.support.procs import free_port as fake_port


@pytest.fixture
def broker():
    fake = FakeBroker()
    yield fake
    fake.stop()


def test_serial_request_frames_and_reply(broker):
    client = SerialClient(broker.url, timeout=5)
    try:
        assert client.request("llama-2-7b-hf", {"text": "hi"}) == {"text": "hi"}
        assert client.request("llama-2-7b-hf", [1, 2]) == [1, 2]
    finally:
        client.close()
    first, second = broker.seen
    assert first.routing_id == second.routing_id == client.routing_id
    assert first.request_id != second.request_id
    assert 4000 < first.ttl_ms <= 5000
    assert first.attempt == 0
    assert broker.raw[0][:2] == [b"MDPC02", b"\x01"]


def test_serial_error_code_raises_its_exception():
    broker = FakeBroker(lambda seen: [error(seen, "overloaded", "queue full")])
    client = SerialClient(broker.url, timeout=5)
    try:
        with pytest.raises(Overloaded, match="queue full"):
            client.request("svc", 1)
    finally:
        client.close()
        broker.stop()


def test_serial_late_reply_to_an_earlier_request_is_dropped():
    """A reply that arrives after its request timed out must not answer the next one."""
    replies: list = []

    def slow_first(seen):
        replies.append(seen)
        if len(replies) == 1:
            return []  # answered only after the caller gave up (below)
        late = final(replies[0], pack("late answer to the first request"))
        return [late, final(seen, *seen.body)]

    broker = FakeBroker(slow_first)
    client = SerialClient(broker.url, timeout=5, deadline_grace=0.05)
    try:
        with pytest.raises(DeadlineExceeded, match="is reachable"):
            client.request("svc", "first", timeout=0.3)
        assert client.request("svc", "second") == "second"
        assert client.stats()["dropped_replies"] == 1
        assert client.stats()["pending"] == 0
    finally:
        client.close()
        broker.stop()


@pytest.mark.timeout(20)  # a hang fails here, not a clock check
def test_serial_deadline_without_broker_says_unreachable():
    client = SerialClient(f"tcp://127.0.0.1:{fake_port()}", timeout=5, deadline_grace=0.05)
    try:
        with pytest.raises(DeadlineExceeded, match=r"unreachable .*never connected"):
            client.request("svc", 1, timeout=0.4)
    finally:
        client.close()
    with pytest.raises(ClientClosed):
        client.request("svc", 1)


def test_serial_resend_after_broker_restart_keeps_deadline():
    broker = FakeBroker(lambda seen: [])
    port = broker.port
    result: dict = {}

    def call():
        client = SerialClient(broker.url, timeout=10, heartbeat_interval=0.2, heartbeat_timeout=0.6)
        result["client"] = client
        try:
            result["r"] = client.request("svc", "x")
            result["stats"] = client.stats()
        finally:
            client.close()

    caller = threading.Thread(target=call)
    caller.start()
    must_wait(lambda: len(broker.seen) == 1, "the broker to hold the request")
    broker.stop()
    must_wait(lambda: not result["client"].connected, "the client to see the broker gone")
    restarted = FakeBroker(echo, port=port)
    try:
        caller.join(10)
        assert result["r"] == "x"
        resend = restarted.seen[-1]
        assert resend.request_id == broker.seen[0].request_id
        assert resend.routing_id == broker.seen[0].routing_id
        assert resend.attempt >= 1
        assert resend.ttl_ms < broker.seen[0].ttl_ms
        assert result["stats"]["resent"] >= 1
        assert result["stats"]["connects"] >= 2
    finally:
        restarted.stop()


def test_serial_mmi_status_and_service_available():
    def mmi(seen):
        if seen.service == "mmi.service":
            return [final(seen, b"200" if seen.body == [b"echo"] else b"404")]
        if seen.service == "mmi.status":
            return [final(seen, pack({"services": {"echo": {"workers": 1}}}))]
        return [final(seen, b"501")]

    broker = FakeBroker(mmi)
    client = SerialClient(broker.url, timeout=5)
    try:
        assert client.service_available("echo") is True
        assert client.service_available("other") is False
        assert client.status()["services"]["echo"]["workers"] == 1
        with pytest.raises(UnknownService):
            client.request("mmi.nothing", {})
    finally:
        client.close()
        broker.stop()


def test_per_thread_client_gives_each_thread_its_own_socket(broker):
    client = PerThreadClient(broker.url, timeout=20)
    errors: list = []

    def work(n: int) -> None:
        try:
            for i in range(25):
                assert client.request("svc", [n, i]) == [n, i]
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert not errors
        stats = client.stats()
        assert stats["sockets"] == 6
        assert stats["pending"] == 0
        assert stats["connected"]
        assert len({s.routing_id for s in broker.seen}) == 6
        assert len(broker.seen) == 150
        assert client.request("svc", "main") == "main"  # this thread too
        assert client.stats()["sockets"] == 7
    finally:
        client.close()
    with pytest.raises(ClientClosed):
        client.request("svc", 1)


def test_per_thread_client_refuses_a_bad_url_up_front():
    with pytest.raises(zmq.ZMQError):
        PerThreadClient("not-a-url")


def test_per_thread_client_through_the_real_broker(tmp_path):
    """Real broker and echo worker processes: every thread gets its own answer."""
    procs = Procs(tmp_path)
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    try:
        procs.broker(port)
        procs.echo(url, "echo", slots=4)
        client = PerThreadClient(url, timeout=10)
        try:
            assert wait_until(lambda: client.service_available("echo", timeout=2), 20)
            results: dict = {}

            def call(n: int) -> None:
                results[n] = client.request("echo", {"n": n})

            threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert {n: r["echo"] for n, r in results.items()} == {n: {"n": n} for n in range(8)}
            assert len({r["request_id"] for r in results.values()}) == 8
            status = client.status(timeout=5)
            assert status["services"]["echo"]["workers"] == 1
        finally:
            client.close()
    finally:
        procs.close()
