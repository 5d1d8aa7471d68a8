"""Client library and worker runtime against a real broker process and echo workers.

Everything here is real: ``python -m broker`` and ``python -m worker.echo`` processes on
loopback, with 0.2 s heartbeats. Skipped until the broker package has its entry point.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mole.protocol import AsyncClient, Client
from mole.protocol.errors import BadRequest, DeadlineExceeded, NoWorker, Overloaded, UnknownService
from tests.protocol.busprocs import (
    HEARTBEAT_INTERVAL,
    LIVENESS,
    Procs,
    kill,
)
from tests.support.procs import free_port, must_wait, wait_until

pytestmark = [
    pytest.mark.timeout(120),
]


class Bus:
    def __init__(self, tmp_path, **broker_env) -> None:
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.procs = Procs(tmp_path)
        self.broker_env = broker_env
        self.broker = self.procs.broker(self.port, **broker_env)
        self.client = Client(self.url, timeout=10, heartbeat_interval=0.2, heartbeat_timeout=0.6)

    def echo(self, service: str = "echo", wait: bool = True, **kwargs):
        proc = self.procs.echo(self.url, service, **kwargs)
        if wait:
            self.wait_for_service(service)
        return proc

    def wait_for_service(self, service: str, timeout: float = 30.0) -> None:
        ok = wait_until(lambda: self.client.service_available(service, timeout=1.0), timeout)
        assert ok, f"{service} never registered:\n{self.procs.logs()}"

    def workers(self, service: str) -> list[dict]:
        return [w for w in self.client.status()["workers"] if w.get("service") == service]

    def restart_broker(self) -> None:
        kill(self.broker)
        self.broker = self.procs.broker(self.port, **self.broker_env)

    def close(self) -> None:
        self.client.close()
        self.procs.close()


@pytest.fixture
def bus(tmp_path):
    made = []

    def make(**broker_env) -> Bus:
        bus = Bus(tmp_path / f"bus{len(made)}", **broker_env)
        made.append(bus)
        return bus

    for i in range(3):
        (tmp_path / f"bus{i}").mkdir()
    yield make
    for b in made:
        b.close()


def test_request_reply_service_available_and_status(bus):
    b = bus()
    b.echo("echo", slots=2, worker_id="echo-1")
    reply = b.client.request("echo", {"text": "hello", "n": 1})
    assert reply["echo"] == {"text": "hello", "n": 1}
    assert reply["worker_id"] == "echo-1"
    assert b.client.service_available("echo") is True
    assert b.client.service_available("nobody-serves-this") is False
    status = b.client.status()
    [worker] = [w for w in status["workers"] if w["service"] == "echo"]
    assert worker["slots"] == 2
    assert worker["metadata"]["worker_id"] == "echo-1"
    assert status["services"]["echo"]["workers"] == 1
    with pytest.raises(UnknownService, match=r"mmi\.nothing"):
        b.client.request("mmi.nothing", {})


def test_many_requests_in_flight_from_many_threads(bus):
    b = bus()
    b.echo("echo", slots=4, worker_id="a")
    b.echo("echo", slots=4, worker_id="b")
    assert wait_until(lambda: len(b.workers("echo")) == 2)
    answered_by = []
    errors = []

    def caller(n):
        try:
            for i in range(25):
                reply = b.client.request("echo", [n, i])
                assert reply["echo"] == [n, i]
                answered_by.append(reply["worker_id"])
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert len(answered_by) == 200
    assert set(answered_by) == {"a", "b"}


@pytest.mark.parametrize("transport", ["native", "zmq"])
def test_many_requests_in_flight_from_asyncio_tasks(bus, transport):
    b = bus()
    b.echo("echo", slots=8)

    async def main():
        async with AsyncClient(b.url, timeout=20, transport=transport) as client:
            assert client.transport == transport
            replies = await asyncio.gather(*[client.request("echo", i) for i in range(300)])
            assert [r["echo"] for r in replies] == list(range(300))
            parts = [p async for p in client.stream("echo", {"_echo": {"partials": 2}})]
            assert [p.get("partial") for p in parts[:2]] == [0, 1]
            assert "echo" in parts[-1]
            assert await client.service_available("echo")

    asyncio.run(main())


def test_stream_partials_through_the_broker(bus):
    b = bus()
    b.echo("echo", partials=3)
    parts = list(b.client.stream("echo", "x"))
    assert [p["partial"] for p in parts[:3]] == [0, 1, 2]
    assert parts[3]["echo"] == "x"
    assert len(parts) == 4


@pytest.mark.timing
def test_error_codes_surface_as_exceptions(bus):
    b = bus(MOLE_BROKER_QUEUE_LIMIT="1")
    b.echo("slow", delay=3.0)
    b.echo("echo")
    # deadline: the worker takes 3 s, the request allows 0.5 s
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        b.client.request("slow", "x", timeout=0.5)
    assert time.monotonic() - start < 2.0
    # no worker: nobody registers "ghost" before the deadline
    with pytest.raises(NoWorker):
        b.client.request("ghost", "x", timeout=0.5)
    # bad request, answered by the worker
    with pytest.raises(BadRequest, match="nope"):
        b.client.request("echo", {"_echo": {"error": "bad_request", "message": "nope"}})
    # overloaded: the queue of a service without workers holds one request
    outcomes = []

    def call():
        try:
            b.client.request("ghost2", "x", timeout=2.0)
        except Exception as err:
            outcomes.append(type(err))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert Overloaded in outcomes, outcomes
    assert b.client.request("echo", "still fine")["echo"] == "still fine"


def test_broker_restart_while_requests_are_pending(bus):
    b = bus()
    b.echo("echo", slots=8, delay=1.0)
    results, attempts, errors = [], [], []

    def call(i):
        try:
            reply = b.client.request("echo", i, timeout=20)
            results.append(reply["echo"])
            attempts.append(reply["attempt"])
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    must_wait(
        lambda: sum(w["in_flight"] for w in b.workers("echo")) == 6,
        "the six requests to be with the worker",
        interval=0.05,
    )
    b.restart_broker()
    for t in threads:
        t.join(30)
    assert not errors, f"{errors[:2]}\n{b.procs.logs()}"
    assert sorted(results) == list(range(6))
    assert min(attempts) >= 1  # every answer came from a resend to the new broker


@pytest.mark.timing
def test_broker_gone_for_good_gives_deadline_exceeded_not_a_hang(bus):
    b = bus()
    b.echo("echo")
    assert b.client.request("echo", 1)["echo"] == 1
    kill(b.broker)
    assert wait_until(lambda: not b.client.connected, timeout=5)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="unreachable"):
        b.client.request("echo", 2, timeout=1.0)
    assert time.monotonic() - start < 3.0


# ----------------------------------------------------------------------------- runtime


def test_busy_worker_keeps_heartbeating_and_is_not_purged(bus):
    b = bus()
    b.echo("echo", worker_id="busy-1")
    [before] = b.workers("echo")
    window = HEARTBEAT_INTERVAL * LIVENESS
    reply = b.client.request("echo", {"_echo": {"delay_s": window * 3}}, timeout=20)
    assert reply["worker_id"] == "busy-1"
    assert reply["attempt"] == 0
    [after] = b.workers("echo")
    assert after["id"] == before["id"]  # the same registration: never purged
    assert b.client.status()["counters"].get("redispatched", 0) == 0


def test_worker_reregisters_after_broker_restart(bus):
    b = bus()
    b.echo("echo", worker_id="phoenix")
    b.restart_broker()
    b.wait_for_service("echo")
    assert b.client.request("echo", "back")["worker_id"] == "phoenix"


def test_slots_are_honoured_through_the_broker(bus):
    b = bus()
    b.echo("echo", slots=2, delay=0.6)
    start = time.monotonic()
    threads = [threading.Thread(target=b.client.request, args=("echo", i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    elapsed = time.monotonic() - start
    assert elapsed >= 1.1  # 4 requests, 2 at a time, 0.6 s each: two rounds
    assert b.workers("echo")[0]["slots"] == 2


def test_sigterm_makes_the_echo_worker_disconnect_at_once(bus):
    slow = {"MOLE_HEARTBEAT_INTERVAL": "5", "MOLE_HEARTBEAT_LIVENESS": "3"}
    b = bus(**slow)
    proc = b.echo("echo", env=slow)
    proc.terminate()
    assert proc.wait(10) == 0
    # purging by silence would take 15 s; DISCONNECT removes it at once
    assert wait_until(lambda: not b.client.service_available("echo", timeout=1.0), timeout=3)


def test_third_party_body_gets_bad_request_from_the_worker_which_keeps_serving(bus):
    """A plain RFC 18 client (no envelope) reaches our worker and gets a clear error."""
    import zmq

    from mole.protocol.envelope import unpack

    b = bus()
    b.echo("echo")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(b.url)
    try:
        sock.send_multipart([b"MDPC02", b"\x01", b"echo", b"plain bytes, no envelope"])
        assert sock.poll(10_000), b.procs.logs()
        header, command, service, *body = sock.recv_multipart()
        assert (header, command, service) == (b"MDPC02", b"\x03", b"echo")
        answer = unpack(body[0])
        assert answer["error"] == "bad_request"
        assert "envelope" in answer["message"]
    finally:
        sock.close(0)
    assert b.client.request("echo", "still serving")["echo"] == "still serving"


def test_worker_killed_mid_request_is_redispatched_to_another(bus):
    b = bus()
    procs = {wid: b.echo("echo", delay=1.5, worker_id=wid, wait=False) for wid in ("k1", "k2")}
    assert wait_until(lambda: len(b.workers("echo")) == 2), b.procs.logs()
    result = {}
    caller = threading.Thread(
        target=lambda: result.update(reply=b.client.request("echo", "survive", timeout=20))
    )
    caller.start()
    busy = []
    assert wait_until(
        lambda: (
            busy.extend(w["metadata"]["worker_id"] for w in b.workers("echo") if w["in_flight"])
            or busy
        )
    )
    kill(procs[busy[0]])
    caller.join(25)
    reply = result["reply"]
    assert reply["echo"] == "survive"
    assert reply["worker_id"] != busy[0]
    assert reply["attempt"] >= 1
