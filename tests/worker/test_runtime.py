"""Worker runtime against a raw ROUTER broker: registration, heartbeats while busy,
reconnect, slots, bad payloads, deadlines, one final per request, clean stop.

Everything about time (the heartbeat schedule, the back-off, the stuck limit, the drain
timeout) runs on a :class:`FakeClock` the test moves, shared by the worker and the raw
broker, so the tests assert the exact instants things happen and never measure time.
"Nothing was sent" is shown by a barrier on the same connection (a later message that
would have come after it) or by a counter read after a later turn of the socket loop.
"""

from __future__ import annotations

import threading

import pytest

from mole.protocol import mdp
from mole.protocol.envelope import RequestHeader, pack, unpack
from mole.protocol.errors import ErrorCode
from mole.worker.echo import EchoHandler
from mole.worker.handler import Handler, Responder, WorkRequest
from mole.worker.runtime import WorkerRuntime
from tests.support.clock import FakeClock
from tests.support.procs import must_wait
from tests.worker.rawbroker import RawBroker, reply_of

W = mdp.WorkerCommand
HB = 0.1  # heartbeat interval (real seconds) of the tests that do not look at time
TICK = 0.5  # heartbeat interval (fake seconds) of the tests on a FakeClock


class BlockingHandler(Handler):
    """Holds each request until the test releases it; records concurrency."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots
        self.release = threading.Event()
        self.active = 0
        self.max_active = 0
        self.received: list[WorkRequest] = []
        self.answered = 0
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
        with self._lock:
            self.answered += 1

    def close(self) -> None:
        self.closed = True


class ManualHandler(Handler):
    """Holds every request until the test answers it (from the test's thread, as a handler
    may answer from any thread)."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots
        self.received: list[WorkRequest] = []
        self._responders: dict[str, Responder] = {}

    def submit(self, request: WorkRequest, responder: Responder) -> None:
        self._responders[request.request_id] = responder
        self.received.append(request)

    def answer(self, request_id: str) -> None:
        self._responders.pop(request_id).final({"done": request_id})


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


@pytest.fixture
def clock():
    return FakeClock(1000.0)


@pytest.fixture
def timed_broker(clock):
    raw = RawBroker(heartbeat_interval=TICK, clock=clock)
    yield raw
    raw.stop()


@pytest.fixture
def timed(timed_broker, clock):
    """Start a runtime on the fake clock at t0 = 1000.0 (heartbeat every TICK, liveness 10
    TICKs); moving the clock wakes it, so it acts on the new time at once."""
    started = []

    def start(handler, **kwargs):
        kwargs.setdefault("heartbeat_interval", TICK)
        kwargs.setdefault("liveness", 10)
        runtime = _runtime(timed_broker, handler, clock=clock, **kwargs)
        clock.on_advance(runtime.wake)
        started.append(runtime.start())
        ident, ready = timed_broker.expect(W.READY)
        # Heard once, the runtime is in its loop with every timer read at t0 (it reads the
        # clock after sending READY: moving it before then would shift its schedule).
        timed_broker.send(ident, [mdp.WORKER_HEADER, mdp.W_HEARTBEAT])
        must_wait(runtime.connected.is_set, "the runtime to hear the broker")
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


def test_heartbeats_keep_their_schedule_while_the_handler_blocks_past_the_liveness_window(
    timed_broker, timed, clock
):
    handler = ManualHandler()
    runtime, ident, _ = timed(handler)  # READY at t0 = 1000.0
    timed_broker.request(ident, b"t", "slow", request_id="slow", ttl_ms=60_000)
    must_wait(lambda: handler.received, "the request to reach the handler")
    # Twenty intervals (twice the liveness window) in half-interval steps: a heartbeat is
    # due at each whole interval, and none at the half steps.
    for step in range(1, 41):
        clock.advance(TICK / 2)
        if step % 2 == 0:
            must_wait(
                lambda n=step // 2: len(timed_broker.heartbeats[ident]) >= n,
                f"heartbeat {step // 2}",
            )
    handler.answer("slow")
    _, message = timed_broker.expect(W.FINAL)  # after every heartbeat sent before it
    assert reply_of(message)[1] == {"done": "slow"}
    assert timed_broker.heartbeats[ident] == [1000.0 + TICK * k for k in range(1, 21)]
    assert runtime.heartbeats_sent == 20
    assert runtime.registrations == 1


def test_reconnects_when_the_broker_goes_silent_for_the_liveness_window(timed_broker, timed, clock):
    runtime, ident, _ = timed(EchoHandler(), liveness=3)
    timed_broker.silent = True
    clock.advance(1.25)  # 2.5 intervals of silence: not yet
    # the worker heartbeats in the same turn of its loop, after its silence check
    must_wait(lambda: timed_broker.heartbeats[ident], "the worker's heartbeat")
    assert timed_broker.heartbeats[ident] == [1001.25]
    assert runtime.registrations == 1
    clock.advance(0.25)  # three intervals
    new_ident, ready = timed_broker.expect(W.READY)
    assert new_ident != ident
    assert ready.service == "svc/model-1"
    assert runtime.registrations == 2


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


def test_handler_missing_the_deadline_frees_its_slot(timed_broker, timed, clock):
    handler = ManualHandler(slots=1)
    runtime, ident, _ = timed(handler)
    timed_broker.request(ident, b"t1", 1, request_id="r1", ttl_ms=1000)
    must_wait(lambda: handler.received, "r1 to reach the handler")
    assert handler.received[0].deadline == 1001.0  # on the runtime's clock
    clock.advance(1.0)
    header, _ = reply_of(timed_broker.expect(W.FINAL)[1])
    assert header.code == ErrorCode.DEADLINE_EXCEEDED
    assert header.request_id == "r1"
    assert runtime.in_flight == 0
    handler.answer("r1")  # its late final must not reach the wire
    timed_broker.request(ident, b"t2", 2, request_id="r2")
    must_wait(lambda: len(handler.received) == 2, "r2 to reach the handler")
    handler.answer("r2")
    _, message = timed_broker.expect()
    assert (message.command, message.client) == (W.FINAL, b"t2")


def test_exactly_one_final_even_if_the_handler_answers_twice(broker, running):
    def twice(request, responder):
        if request.payload == "barrier":
            responder.final("barrier")
            return
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
    # Anything more for t1 or t2 would reach the broker before this later answer.
    broker.request(ident, b"t3", "barrier", request_id="r3")
    third = broker.expect()[1]
    assert (third.command, third.client, reply_of(third)[1]) == (W.FINAL, b"t3", "barrier")


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
    must_wait(lambda: runtime.in_flight == 1, "the old request to be in flight")
    broker.disconnect(ident)
    new_ident, _ = broker.expect(W.READY, timeout=10)
    handler.release.set()  # the old request finishes after the re-registration
    must_wait(lambda: handler.answered == 1, "the handler to answer the old request")
    # The old answer is queued before the new request arrives, so had it been sent it
    # would reach the broker first.
    broker.request(new_ident, b"new", 2, request_id="r-new")
    _, message = broker.expect()
    assert (message.command, message.client) == (W.FINAL, b"new")


def test_oversized_reply_becomes_internal_error(broker, running):
    _, ident, _ = running(EchoHandler(), max_reply_bytes=2000)
    broker.request(ident, b"t1", b"x" * 5000, request_id="big")
    header, _ = reply_of(broker.expect(W.FINAL)[1])
    assert header.code == ErrorCode.INTERNAL
    assert "byte message limit" in header.message
    broker.request(ident, b"t2", b"x" * 100, request_id="small")
    assert reply_of(broker.expect(W.FINAL)[1])[1]["echo"] == b"x" * 100


def test_backoff_doubles_while_the_broker_refuses_and_resets_once_it_answers():
    # A broker that never heartbeats on its own, so only what the test sends is "heard".
    refuser = RawBroker(heartbeat_interval=3600)
    pauses: list[float] = []
    runtime = _runtime(
        refuser, EchoHandler(), reconnect_initial=0.05, reconnect_max=0.4, pause=pauses.append
    ).start()
    try:
        for _ in range(5):
            ident, _ = refuser.expect(W.READY)
            refuser.disconnect(ident)  # refused at once: nothing heard on that connection
        ident, _ = refuser.expect(W.READY)
        assert pauses == [0.1, 0.2, 0.4, 0.4, 0.4]
        refuser.send(ident, [mdp.WORKER_HEADER, mdp.W_HEARTBEAT])  # heard, then dropped
        refuser.disconnect(ident)
        refuser.expect(W.READY)
        assert pauses == [0.1, 0.2, 0.4, 0.4, 0.4, 0.05]
    finally:
        runtime.stop()
        refuser.stop()


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


def test_drain_answers_in_flight_then_disconnects_and_takes_no_new_work(broker, running):
    handler = BlockingHandler(slots=4)
    runtime, ident, _ = running(handler)
    broker.request(ident, b"t1", {"n": 1}, request_id="r1", ttl_ms=30_000)
    must_wait(lambda: len(handler.received) == 1, "r1 to reach the handler")
    runtime.drain(timeout=30)
    assert runtime.draining
    broker.request(ident, b"t2", {"n": 2}, request_id="r2", ttl_ms=30_000)
    must_wait(lambda: runtime.declined == 1, "r2 to be declined")
    assert [r.request_id for r in handler.received] == ["r1"]  # r2 never reached the handler
    assert not runtime.drained.is_set()  # r1 still in flight: no DISCONNECT yet
    handler.release.set()
    _, final = broker.expect(W.FINAL)
    assert final.client == b"t1"
    assert reply_of(final)[1] == {"done": {"n": 1}}
    broker.expect(W.DISCONNECT)
    assert runtime.drained.wait(5)
    must_wait(lambda: handler.closed, "the handler to be closed")


def test_drain_with_nothing_in_flight_disconnects_at_once(broker, running):
    runtime, _, _ = running(EchoHandler(worker_id="w-test"))
    runtime.drain()
    broker.expect(W.DISCONNECT)
    assert runtime.drained.wait(5)


def test_drain_timeout_disconnects_with_work_unfinished(timed_broker, timed, clock):
    handler = ManualHandler(slots=2)
    runtime, ident, _ = timed(handler)
    timed_broker.request(ident, b"t1", {"n": 1}, request_id="r1", ttl_ms=60_000)
    must_wait(lambda: len(handler.received) == 1, "r1 to reach the handler")
    runtime.drain(timeout=2.0)
    clock.advance(1.5)  # inside the drain timeout: still waiting for r1
    timed_broker.request(ident, b"t2", {"n": 2}, request_id="r2", ttl_ms=60_000)
    must_wait(lambda: runtime.declined == 1, "r2 to be declined")
    assert not runtime.drained.is_set()  # the turn that declined r2 saw r1 in flight
    clock.advance(0.5)  # the drain timeout is up
    timed_broker.expect(W.DISCONNECT)  # no FINAL before it: the broker re-dispatches r1
    assert runtime.drained.wait(5)


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
        must_wait(lambda: len(handler.received) == 1, "r1 to reach the handler")
        os.kill(os.getpid(), signal.SIGTERM)
        must_wait(lambda: runtime.draining, "the first SIGTERM to start a drain")
        broker.request(ident, b"t2", {"n": 2}, request_id="r2", ttl_ms=30_000)
        must_wait(lambda: runtime.declined == 1, "r2 to be declined")
        assert not runtime.drained.is_set()  # draining with r1 held: no DISCONNECT
        os.kill(os.getpid(), signal.SIGTERM)
        broker.expect(W.DISCONNECT)  # the first message since: nothing answered r1 or r2
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        handler.release.set()


# ---- a stuck compute loop stops the heartbeat (#16 item 2) -------------------------------


def test_stuck_handler_stops_heartbeats_until_it_answers_again(timed_broker, timed, clock):
    handler = ManualHandler(slots=4)
    runtime, ident, _ = timed(handler, stuck_limit=2.0)
    timed_broker.request(ident, b"t1", {"n": 1}, request_id="r1", ttl_ms=60_000)
    must_wait(lambda: handler.received, "r1 to reach the handler")
    clock.advance(2.25)  # past the stuck limit, and past a heartbeat's due time
    must_wait(runtime.stuck.is_set, "the runtime to call its compute loop stuck")
    for _ in range(4):  # four more heartbeat intervals: none may be sent
        clock.advance(TICK)
    timed_broker.request(ident, b"t2", {"n": 2}, request_id="r2", ttl_ms=60_000)
    must_wait(lambda: runtime.declined == 1, "r2 to be declined")
    timed_broker.request(ident, b"t3", {"n": 3}, request_id="r3", ttl_ms=60_000)
    must_wait(lambda: runtime.declined == 2, "r3 to be declined")
    # the turn that declined r2 (at the latest time) is over, and it sent nothing
    assert runtime.heartbeats_sent == 0
    assert [r.request_id for r in handler.received] == ["r1"]
    handler.answer("r1")  # the compute loop answers again
    _, final = timed_broker.expect()  # the first message since the request: no reply to r2/r3
    assert (final.command, reply_of(final)[0].request_id) == (W.FINAL, "r1")
    assert timed_broker.heartbeats[ident] == []  # silent all along
    must_wait(lambda: not runtime.stuck.is_set(), "the runtime to leave the stuck state")
    resumed = clock.advance(TICK)
    must_wait(lambda: timed_broker.heartbeats[ident], "heartbeats to resume")
    assert timed_broker.heartbeats[ident] == [resumed]
    assert runtime.stuck_episodes == 1


def test_stuck_worker_purged_by_a_silent_broker_registers_again_once_it_recovers(
    timed_broker, timed, clock
):
    handler = ManualHandler()
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        threading.Event().wait(0.005)  # pacing only: keeps the stuck loop from spinning

    runtime, ident, _ = timed(handler, stuck_limit=1.0, liveness=3, pause=pause)
    timed_broker.request(ident, b"t1", {"n": 1}, request_id="r1", ttl_ms=60_000)
    must_wait(lambda: handler.received, "r1 to reach the handler")
    timed_broker.silent = True  # what a broker that purged the worker looks like to it
    clock.advance(1.25)  # stuck
    must_wait(runtime.stuck.is_set, "the runtime to call its compute loop stuck")
    clock.advance(1.5)  # three silent intervals since the broker was last heard
    must_wait(lambda: not runtime.connected.is_set(), "the worker to drop the connection")
    must_wait(lambda: len(pauses) >= 4, "the runtime to wait out its stuck compute loop")
    # one back-off after the connection ended (it had heard the broker: the initial one),
    # then a wait of one interval at a time for the handler, never a new connection
    assert pauses[0] == 0.05
    assert set(pauses[1:]) == {TICK}
    assert runtime.registrations == 1  # no READY while the compute loop is stuck
    timed_broker.silent = False
    handler.answer("r1")
    timed_broker.expect(W.READY)  # registered again, on a new connection
    clock.advance(TICK)  # the broker's next heartbeat is due
    must_wait(runtime.connected.is_set, "the new connection to hear the broker")
    assert runtime.registrations == 2


def test_a_busy_handler_that_keeps_answering_is_not_stuck(timed_broker, timed, clock):
    handler = ManualHandler(slots=2)
    runtime, ident, _ = timed(handler, stuck_limit=1.0)
    timed_broker.request(ident, b"t0", 0, request_id="r0", ttl_ms=60_000)
    must_wait(lambda: len(handler.received) == 1, "r0 to reach the handler")
    # Requests overlap, so the handler always holds one; each answer comes 0.75 s after
    # the previous one, 6 s of work in all against a 1 s stuck limit.
    for i in range(1, 9):
        timed_broker.request(ident, b"t%d" % i, i, request_id=f"r{i}", ttl_ms=60_000)
        must_wait(lambda n=i + 1: len(handler.received) == n, f"r{i} to reach the handler")
        clock.advance(0.75)
        # Both slots are busy: a probe gets "overloaded" at once, from a turn of the loop
        # that judged the compute loop at the new time (stuck, it would decline the probe).
        timed_broker.request(ident, b"probe", "probe", request_id=f"probe{i}", ttl_ms=60_000)
        header, _ = reply_of(timed_broker.expect(W.FINAL)[1])
        assert (header.request_id, header.code) == (f"probe{i}", ErrorCode.OVERLOADED)
        handler.answer(f"r{i - 1}")
        _, final = timed_broker.expect(W.FINAL)
        assert reply_of(final)[1] == {"done": f"r{i - 1}"}
    assert runtime.stuck_episodes == 0
    assert runtime.declined == 0


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
        must_wait(lambda: len(second.heartbeats) > 0, "a heartbeat to the new broker")
        assert runtime.registrations == 1  # same connection: ZeroMQ reconnected underneath
        (ident,) = second.heartbeats
        second.send(ident, [mdp.WORKER_HEADER, mdp.W_DISCONNECT])  # as RFC 18 answers it
        second.expect(W.READY, timeout=10)  # registered anew with the restarted broker
    finally:
        runtime.stop()
        if second is not None:
            second.stop()
