"""Worker runtime against a raw ROUTER broker: registration, heartbeats while busy,
reconnect, slots, bad payloads, deadlines, one final per request, clean stop."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from mole.protocol import mdp
from mole.protocol.envelope import RequestHeader, pack, unpack
from mole.protocol.errors import ErrorCode
from mole.worker.echo import EchoHandler
from mole.worker.handler import Handler, Responder, WorkRequest
from mole.worker.runtime import WorkerRuntime
from tests.worker.rawbroker import RawBroker, reply_of

W = mdp.WorkerCommand
HB = 0.1  # heartbeat interval used by every test here


class BlockingHandler(Handler):
    """Holds each request until the test releases it; records concurrency."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots
        self.release = threading.Event()
        self.active = 0
        self.max_active = 0
        self.received: list[WorkRequest] = []
        self.closed = False
        self._lock = threading.Lock()

    def submit(self, request: WorkRequest, responder: Responder) -> None:
        self.received.append(request)
        threading.Thread(target=self._work, args=(request, responder), daemon=True).start()

    def _work(self, request, responder):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.release.wait(30)
        with self._lock:
            self.active -= 1
        responder.final({"done": request.payload})

    def close(self) -> None:
        self.closed = True


class ScriptedHandler(Handler):
    """Runs ``script(request, responder)`` inline: for misbehaving-handler tests."""

    def __init__(self, script) -> None:
        self.script = script

    def submit(self, request, responder):
        self.script(request, responder)


@pytest.fixture
def broker():
    raw = RawBroker(heartbeat_interval=HB)
    yield raw
    raw.stop()


def _runtime(broker, handler, **kwargs):
    kwargs.setdefault("heartbeat_interval", HB)
    # A generous window (1 s) so a loaded machine does not trigger reconnections in tests
    # that are not about them; those tests pass liveness=3 themselves.
    kwargs.setdefault("liveness", 10)
    kwargs.setdefault("reconnect_initial", 0.05)
    kwargs.setdefault("reconnect_max", 0.2)
    return WorkerRuntime(broker.url, "svc/model-1", handler, worker_id="w-test", **kwargs)


@pytest.fixture
def running(broker):
    started = []

    def start(handler, **kwargs):
        runtime = _runtime(broker, handler, **kwargs).start()
        started.append(runtime)
        ident, ready = broker.expect(W.READY)
        return runtime, ident, ready

    yield start
    for runtime in started:
        runtime.stop()


def test_ready_carries_service_and_metadata(running):
    _, _, ready = running(EchoHandler(slots=3, worker_id="w-test"))
    assert ready.service == "svc/model-1"
    meta = unpack(ready.metadata)
    assert meta["slots"] == 3
    assert meta["worker_id"] == "w-test"
    assert meta["tasks"] == ["echo"]
    assert isinstance(meta["pid"], int)


def test_echo_request_and_partials(broker, running):
    _, ident, _ = running(EchoHandler(worker_id="w-test", partials=2))
    broker.request(ident, b"ticket-1", {"x": 1}, request_id="r1")
    kinds = []
    while True:
        _, message = broker.expect(W.PARTIAL, W.FINAL)
        assert message.client == b"ticket-1"
        header, payload = reply_of(message)
        assert header.request_id == "r1"
        assert header.ok
        kinds.append(message.command)
        if message.command == W.FINAL:
            assert payload["echo"] == {"x": 1}
            assert payload["worker_id"] == "w-test"
            break
    assert kinds == [W.PARTIAL, W.PARTIAL, W.FINAL]


def test_heartbeats_flow_while_the_handler_blocks_past_the_liveness_window(broker, running):
    handler = BlockingHandler()
    # The worker's window for hearing the (test) broker is wide, so a starved test thread
    # on a loaded machine does not make it reconnect; what is checked is that the worker's
    # own heartbeats keep flowing every interval while its handler blocks for 2 s.
    runtime, ident, _ = running(handler, liveness=30)
    broker.request(ident, b"t", "slow", ttl_ms=30000)
    start = time.monotonic()
    time.sleep(2.0)  # twenty heartbeat intervals
    handler.release.set()
    _, message = broker.expect(W.FINAL)
    assert reply_of(message)[1] == {"done": "slow"}
    beats = [t for t in broker.heartbeats[ident] if t >= start]
    assert len(beats) >= 6, beats  # ~20 expected; a loaded machine still sends many
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert max(gaps) < 0.5, gaps  # never silent for a liveness window while blocked
    assert runtime.registrations == 1


def test_reconnects_when_the_broker_goes_silent(broker, running):
    runtime, ident, _ = running(EchoHandler(), liveness=3)
    broker.silent = True
    new_ident, ready = broker.expect(W.READY, timeout=10)
    assert new_ident != ident
    assert ready.service == "svc/model-1"
    assert runtime.registrations >= 2


def test_reregisters_after_disconnect(broker, running):
    _runtime, ident, _ = running(EchoHandler())
    broker.disconnect(ident)
    new_ident, _ = broker.expect(W.READY, timeout=10)
    broker.request(new_ident, b"t2", "after", request_id="r2")
    _, message = broker.expect(W.FINAL)
    assert reply_of(message)[1]["echo"] == "after"


def test_reregisters_after_broker_restart():
    first = RawBroker(heartbeat_interval=HB)
    runtime = _runtime(first, EchoHandler()).start()
    try:
        first.expect(W.READY)
        first.stop()
        second = RawBroker(port=first.port, heartbeat_interval=HB)
        try:
            ident, _ready = second.expect(W.READY, timeout=10)
            second.request(ident, b"t", "hello again")
            _, message = second.expect(W.FINAL)
            assert reply_of(message)[1]["echo"] == "hello again"
        finally:
            runtime.stop()
            second.stop()
    finally:
        runtime.stop()


def test_slots_are_honoured(broker, running):
    handler = BlockingHandler(slots=2)
    runtime, ident, ready = running(handler)
    assert unpack(ready.metadata)["slots"] == 2
    for i in range(3):
        broker.request(ident, b"t%d" % i, i, request_id=f"r{i}", ttl_ms=30000)
    _, rejected = broker.expect(W.FINAL)
    header, _ = reply_of(rejected)
    assert header.code == ErrorCode.OVERLOADED
    assert header.request_id == "r2"
    assert "2 slots" in header.message
    handler.release.set()
    finals = {broker.expect(W.FINAL)[1].client for _ in range(2)}
    assert finals == {b"t0", b"t1"}
    assert handler.max_active == 2
    assert runtime.in_flight == 0
    broker.request(ident, b"t9", 9, request_id="r9")
    assert reply_of(broker.expect(W.FINAL)[1])[1] == {"done": 9}


@pytest.mark.parametrize(
    ("body", "opaque", "fragment"),
    [
        ([b"plain text, not ours"], True, "not a MoLE envelope"),
        ([], True, "empty request body"),
        ([RequestHeader("r", 5000).encode(), b"\xc1\xc1"], False, "not valid msgpack"),
        ([RequestHeader("r", 5000).encode()], False, "payload frames"),
        ([RequestHeader("r", 5000).encode(), pack(1), pack(2)], False, "payload frames"),
        ([pack({"v": 1, "id": "r", "ttl": "soon"}), pack(1)], False, "ttl"),
    ],
)
def test_bad_payloads_get_bad_request_and_the_worker_keeps_serving(
    broker, running, body, opaque, fragment
):
    handler = EchoHandler()
    _, ident, _ = running(handler)
    broker.request(ident, b"bad", None, body=body)
    _, message = broker.expect(W.FINAL)
    assert message.client == b"bad"
    if opaque:
        answer = unpack(message.body[0])
        assert answer["error"] == "bad_request"
        assert fragment in answer["message"]
    else:
        header, _ = reply_of(message)
        assert header.code == ErrorCode.BAD_REQUEST
        assert fragment in header.message
        assert header.request_id == "r"
    assert handler.handled == 0
    broker.request(ident, b"good", "fine", request_id="ok")
    _, message = broker.expect(W.FINAL)
    assert reply_of(message)[1]["echo"] == "fine"


def test_expired_request_is_not_given_to_the_handler(broker, running):
    handler = EchoHandler()
    _, ident, _ = running(handler)
    broker.request(ident, b"t", "late", ttl_ms=0)
    header, _ = reply_of(broker.expect(W.FINAL)[1])
    assert header.code == ErrorCode.DEADLINE_EXCEEDED
    assert handler.handled == 0


def test_handler_missing_the_deadline_frees_its_slot(broker, running):
    handler = BlockingHandler(slots=1)
    runtime, ident, _ = running(handler)
    broker.request(ident, b"t1", 1, request_id="r1", ttl_ms=300)
    header, _ = reply_of(broker.expect(W.FINAL, timeout=5)[1])
    assert header.code == ErrorCode.DEADLINE_EXCEEDED
    assert header.request_id == "r1"
    assert runtime.in_flight == 0
    handler.release.set()  # its late final must not reach the wire
    broker.request(ident, b"t2", 2, request_id="r2")
    _, message = broker.expect(W.FINAL)
    assert message.client == b"t2"


def test_exactly_one_final_even_if_the_handler_answers_twice(broker, running):
    def twice(request, responder):
        responder.final("first")
        responder.final("second")
        responder.error("internal", "third")
        responder.partial("after the end")

    _, ident, _ = running(ScriptedHandler(twice))
    broker.request(ident, b"t1", 1, request_id="r1")
    broker.request(ident, b"t2", 2, request_id="r2")
    first = broker.expect(W.FINAL)[1]
    second = broker.expect(W.FINAL)[1]
    assert (first.client, reply_of(first)[1]) == (b"t1", "first")
    assert (second.client, reply_of(second)[1]) == (b"t2", "first")
    time.sleep(HB * 2)
    assert broker.inbox.empty()


def test_handler_exceptions_and_unencodable_replies_become_internal(broker, running):
    def bad(request, responder):
        if request.payload == "raise":
            raise RuntimeError("boom")
        responder.final(object())  # msgpack cannot encode it

    _, ident, _ = running(ScriptedHandler(bad))
    broker.request(ident, b"t1", "raise", request_id="r1")
    header, _ = reply_of(broker.expect(W.FINAL)[1])
    assert header.code == ErrorCode.INTERNAL
    assert "boom" in header.message
    broker.request(ident, b"t2", "object", request_id="r2")
    header, _ = reply_of(broker.expect(W.FINAL)[1])
    assert header.code == ErrorCode.INTERNAL
    assert header.request_id == "r2"


def test_stop_sends_disconnect_and_closes_the_handler(broker):
    handler = BlockingHandler()
    runtime = _runtime(broker, handler).start()
    broker.expect(W.READY)
    runtime.stop()
    broker.expect(W.DISCONNECT)
    assert handler.closed
    assert not runtime._thread.is_alive()


def test_reserved_service_names_are_refused():
    with pytest.raises(ValueError, match="reserved"):
        WorkerRuntime("tcp://127.0.0.1:1", "mmi.service", EchoHandler())


def test_answers_of_an_earlier_connection_are_dropped(broker, running):
    handler = BlockingHandler(slots=1)
    runtime, ident, _ = running(handler)
    broker.request(ident, b"old", 1, request_id="r-old", ttl_ms=30000)
    assert _wait(lambda: runtime.in_flight == 1)
    broker.disconnect(ident)
    new_ident, _ = broker.expect(W.READY, timeout=10)
    handler.release.set()  # the old request finishes after the re-registration
    broker.request(new_ident, b"new", 2, request_id="r-new")
    _, message = broker.expect(W.FINAL)
    assert message.client == b"new"
    time.sleep(HB * 2)
    assert broker.inbox.empty()  # the old answer never reached the new connection


def _wait(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_oversized_reply_becomes_internal_error(broker, running):
    _, ident, _ = running(EchoHandler(), max_reply_bytes=2000)
    broker.request(ident, b"t1", b"x" * 5000, request_id="big")
    header, _ = reply_of(broker.expect(W.FINAL)[1])
    assert header.code == ErrorCode.INTERNAL
    assert "byte message limit" in header.message
    broker.request(ident, b"t2", b"x" * 100, request_id="small")
    assert reply_of(broker.expect(W.FINAL)[1])[1]["echo"] == b"x" * 100


def test_backoff_grows_when_the_broker_refuses_at_once(broker):
    runtime = _runtime(broker, EchoHandler(), reconnect_initial=0.05, reconnect_max=0.4).start()
    try:
        times = []
        for _ in range(5):
            ident, _ = broker.expect(W.READY)
            times.append(time.monotonic())
            broker.disconnect(ident)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps[-1] >= 0.3, gaps
        assert gaps[-1] > gaps[0], gaps  # 0.05, 0.1, 0.2, 0.4 s
    finally:
        runtime.stop()


def test_echo_entry_point_rejects_bad_settings_clearly():
    import os
    import subprocess
    import sys

    base = [
        sys.executable,
        "-m",
        "mole.worker.echo",
        "--broker",
        "tcp://127.0.0.1:1",
        "--service",
        "s",
    ]
    for extra, env, fragment in [
        (["--slots", "0"], {}, "--slots must be >= 1"),
        ([], {"MOLE_HEARTBEAT_INTERVAL": "soon"}, "invalid float value: 'soon'"),
    ]:
        out = subprocess.run(
            base + extra, capture_output=True, text=True, timeout=60, env={**os.environ, **env}
        )
        assert out.returncode == 2, out.stderr
        assert fragment in out.stderr, out.stderr


# ---- graceful drain (#16 item 4) -------------------------------------------------------


def _no_message(broker, seconds: float) -> bool:
    """True when nothing but heartbeats reaches the broker for ``seconds``."""
    try:
        broker.expect(timeout=seconds)
    except Exception:  # queue.Empty
        return True
    return False


def test_drain_answers_in_flight_then_disconnects_and_takes_no_new_work(broker, running):
    handler = BlockingHandler(slots=4)
    runtime, ident, _ = running(handler)
    broker.request(ident, b"t1", {"n": 1}, request_id="r1", ttl_ms=30_000)
    _wait_for(lambda: len(handler.received) == 1)
    runtime.drain(timeout=30)
    assert runtime.draining
    broker.request(ident, b"t2", {"n": 2}, request_id="r2", ttl_ms=30_000)
    _wait_for(lambda: runtime.declined == 1)
    assert [r.request_id for r in handler.received] == ["r1"]  # r2 never reached the handler
    assert not runtime.drained.is_set()  # r1 still in flight: no DISCONNECT yet
    handler.release.set()
    _, final = broker.expect(W.FINAL)
    assert final.client == b"t1"
    assert reply_of(final)[1] == {"done": {"n": 1}}
    broker.expect(W.DISCONNECT)
    assert runtime.drained.wait(5)
    _wait_for(lambda: handler.closed)


def test_drain_with_nothing_in_flight_disconnects_at_once(broker, running):
    runtime, _, _ = running(EchoHandler(worker_id="w-test"))
    runtime.drain()
    broker.expect(W.DISCONNECT)
    assert runtime.drained.wait(5)


def test_drain_timeout_disconnects_with_work_unfinished(broker, running):
    handler = BlockingHandler(slots=1)
    runtime, ident, _ = running(handler)
    broker.request(ident, b"t1", {"n": 1}, request_id="r1", ttl_ms=30_000)
    _wait_for(lambda: len(handler.received) == 1)
    runtime.drain(timeout=0.3)
    broker.expect(W.DISCONNECT)  # no FINAL before it: the broker re-dispatches r1
    assert runtime.drained.wait(5)
    handler.release.set()


def test_second_signal_stops_a_draining_worker(broker, running):
    import os
    import signal

    from mole.worker.runtime import stop_on_signals

    handler = BlockingHandler(slots=1)
    runtime, ident, _ = running(handler, drain_timeout=60)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_signals(runtime)
        broker.request(ident, b"t1", {"n": 1}, request_id="r1", ttl_ms=30_000)
        _wait_for(lambda: len(handler.received) == 1)
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(lambda: runtime.draining)
        assert _no_message(broker, 0.3)  # draining, r1 held: nothing sent but heartbeats
        os.kill(os.getpid(), signal.SIGTERM)
        broker.expect(W.DISCONNECT)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        handler.release.set()


# ---- a stuck compute loop stops the heartbeat (#16 item 2) -------------------------------


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_stuck_handler_stops_heartbeats_until_it_answers_again(broker, running):
    handler = BlockingHandler(slots=2)
    runtime, ident, _ = running(handler, stuck_limit=0.4)
    broker.request(ident, b"t1", {"n": 1}, request_id="r1", ttl_ms=30_000)
    _wait_for(runtime.stuck.is_set)
    beats = len(broker.heartbeats[ident])
    broker.request(ident, b"t2", {"n": 2}, request_id="r2", ttl_ms=30_000)
    assert _no_message(broker, 0.6)  # silent: no heartbeat, no reply, nothing
    assert len(broker.heartbeats[ident]) == beats
    assert [r.request_id for r in handler.received] == ["r1"]  # r2 was declined
    assert runtime.declined == 1
    handler.release.set()  # the compute loop answers again
    _, final = broker.expect(W.FINAL)
    assert reply_of(final)[0].request_id == "r1"
    _wait_for(lambda: not runtime.stuck.is_set())
    _wait_for(lambda: len(broker.heartbeats[ident]) > beats)
    assert runtime.stuck_episodes == 1


def test_stuck_worker_purged_by_a_silent_broker_registers_again_once_it_recovers(broker, running):
    handler = BlockingHandler(slots=1)
    runtime, ident, _ = running(handler, stuck_limit=0.3, liveness=3)
    broker.request(ident, b"t1", {"n": 1}, request_id="r1", ttl_ms=30_000)
    _wait_for(runtime.stuck.is_set)
    broker.silent = True  # what a broker that purged the worker looks like to it
    _wait_for(lambda: not runtime.connected.is_set())
    assert _no_message(broker, 0.5)  # no READY while the compute loop is stuck
    broker.silent = False
    handler.release.set()
    broker.expect(W.READY)  # registered again, on a new connection
    _wait_for(runtime.connected.is_set)


def test_a_busy_handler_that_keeps_answering_is_not_stuck(broker, running):
    handler = EchoHandler(slots=1, delay_s=0.15, worker_id="w-test")
    runtime, ident, _ = running(handler, stuck_limit=1.0)
    for i in range(12):  # 1.8 s of continuous work, every answer well inside the limit
        broker.request(ident, f"t{i}".encode(), {"i": i}, request_id=f"r{i}", ttl_ms=30_000)
        broker.expect(W.FINAL)
    assert runtime.stuck_episodes == 0


def test_stuck_limit_must_be_positive(broker):
    with pytest.raises(ValueError, match="stuck_limit"):
        _runtime(broker, EchoHandler(), stuck_limit=0)


def test_heartbeats_at_once_when_zeromq_reconnects_to_a_restarted_broker():
    """Heartbeats every 60 s: the only heartbeat the new broker can get within the test's
    wait is the one the worker sends when its socket's handshake with it succeeds."""
    first = RawBroker(heartbeat_interval=60)
    runtime = _runtime(first, EchoHandler(), heartbeat_interval=60, liveness=10).start()
    second = None
    try:
        first.expect(W.READY)
        first.stop()
        second = RawBroker(port=first.port, heartbeat_interval=60)
        # len() only: the broker's thread adds the key while this thread looks
        _wait_for(lambda: len(second.heartbeats) > 0, timeout=20)
        assert runtime.registrations == 1  # same connection: ZeroMQ reconnected underneath
        (ident,) = second.heartbeats
        second.send(ident, [mdp.WORKER_HEADER, mdp.W_DISCONNECT])  # as RFC 18 answers it
        second.expect(W.READY, timeout=10)  # registered anew with the restarted broker
    finally:
        runtime.stop()
        if second is not None:
            second.stop()
