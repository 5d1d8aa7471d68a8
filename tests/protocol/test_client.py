"""Client and AsyncClient against a raw ROUTER peer: framing, correlation, errors, resend."""

from __future__ import annotations

import asyncio
import threading

import pytest
import zmq

from mole.protocol import AsyncClient, Client, ClientClosed
from mole.protocol.envelope import pack, unpack
from mole.protocol.errors import (
    BadRequest,
    DeadlineExceeded,
    ErrorCode,
    Overloaded,
    RequestError,
    WorkerLost,
)
from tests.protocol.fakebroker import FakeBroker, echo, error, final, partial
from tests.support.procs import must_wait, must_wait_async


@pytest.fixture(params=["zmq", "native"])
def transport(request):
    """The asyncio client's two transports: every AsyncClient test runs on both."""
    return request.param


@pytest.fixture
def broker():
    fake = FakeBroker()
    yield fake
    fake.stop()


def test_request_frames_and_reply(broker):
    with Client(broker.url, timeout=5) as client:
        assert client.request("llama-2-7b-hf", {"text": "hi", "n": [1, 2]}) == {
            "text": "hi",
            "n": [1, 2],
        }
        client.request("llama-2-7b-hf", b"\x00" * 10)
    first, second = broker.seen
    assert first.service == "llama-2-7b-hf"
    assert first.attempt == 0
    assert 4000 < first.ttl_ms <= 5000
    assert first.routing_id == second.routing_id == client.routing_id
    assert first.request_id != second.request_id
    assert broker.raw[0][:2] == [b"MDPC02", b"\x01"]  # RFC 18: no empty delimiter


def test_replies_out_of_order_reach_the_right_callers():
    held = []

    def hold_then_reverse(seen):
        held.append(seen)
        if len(held) < 8:
            return []
        return [final(s, *s.body) for s in reversed(held)]

    broker = FakeBroker(hold_then_reverse)
    try:
        with Client(broker.url, timeout=10) as client:
            results = {}

            def call(i):
                results[i] = client.request("svc", i)

            threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(15)
            assert results == {i: i for i in range(8)}
    finally:
        broker.stop()


def test_many_threads_many_requests(broker):
    with Client(broker.url, timeout=20) as client:
        errors = []

        def worker(n):
            try:
                for i in range(40):
                    assert client.request("svc", [n, i]) == [n, i]
            except Exception as err:  # pragma: no cover - reported below
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert client.pending == 0
    assert len(broker.seen) == 320


@pytest.mark.parametrize("code", list(ErrorCode))
def test_each_error_code_raises_its_exception(code):
    broker = FakeBroker(lambda seen: [error(seen, code.value, f"because {code}")])
    try:
        with Client(broker.url, timeout=5) as client, pytest.raises(RequestError) as info:
            client.request("svc", 1)
        assert info.value.code == code
        assert info.value.message == f"because {code}"
        assert info.value.request_id == broker.seen[0].request_id
    finally:
        broker.stop()


def test_stream_yields_partials_then_final():
    broker = FakeBroker(lambda s: [partial(s, pack(i)) for i in range(3)] + [final(s, pack("end"))])
    try:
        with Client(broker.url, timeout=5) as client:
            assert list(client.stream("svc", None)) == [0, 1, 2, "end"]
            assert client.pending == 0
    finally:
        broker.stop()


def test_stream_error_after_partials():
    broker = FakeBroker(lambda s: [partial(s, pack(1)), error(s, "worker_lost", "gone")])
    try:
        with Client(broker.url, timeout=5) as client:
            parts = []
            with pytest.raises(WorkerLost):
                parts.extend(client.stream("svc", None))  # what came before the loss stays
            assert parts == [1]
    finally:
        broker.stop()


@pytest.mark.timeout(20)  # a client that hung past its deadline fails here, not a clock check
def test_deadline_with_broker_reachable_but_silent():
    broker = FakeBroker(lambda seen: [])
    try:
        with Client(broker.url, timeout=5, deadline_grace=0.05) as client:
            with pytest.raises(DeadlineExceeded, match="is reachable"):
                client.request("svc", 1, timeout=0.3)
            assert client.pending == 0
    finally:
        broker.stop()


@pytest.mark.timeout(20)  # "does not hang": a hang fails here, not a clock check
def test_deadline_with_no_broker_says_unreachable_and_does_not_hang():
    from tests.support.procs import free_port

    with Client(f"tcp://127.0.0.1:{free_port()}", timeout=5, deadline_grace=0.05) as client:
        with pytest.raises(DeadlineExceeded, match=r"unreachable .*never connected"):
            client.request("svc", 1, timeout=0.4)
        with pytest.raises(DeadlineExceeded):
            list(client.stream("svc", 1, timeout=0.2))


def test_late_duplicate_and_junk_replies_are_dropped(broker):
    def noisy(seen):
        return [
            [b"junk"],
            [b"MDPC02", b"\x03", b"svc", b"not a header"],
            final(seen, *seen.body),
            final(seen, pack("second")),
        ]

    broker.behaviour = noisy
    with Client(broker.url, timeout=5) as client:
        assert client.request("svc", "first") == "first"
        must_wait(lambda: client._core.dropped >= 3, "three dropped replies")
        broker.behaviour = echo
        assert client.request("svc", "still works") == "still works"


def test_resend_after_broker_restart_keeps_deadline():
    """The broker dies holding a request; a new one on the same port gets it again."""
    broker = FakeBroker(lambda seen: [])
    port = broker.port
    with Client(broker.url, timeout=10, heartbeat_interval=0.2, heartbeat_timeout=0.6) as client:
        result = {}
        caller = threading.Thread(target=lambda: result.update(r=client.request("svc", "x")))
        caller.start()
        must_wait(lambda: len(broker.seen) == 1, "the broker to hold the request")
        must_wait(lambda: client.connected, "the client to be connected")
        broker.stop()
        must_wait(lambda: not client.connected, "the client to see the broker gone")
        restarted = FakeBroker(echo, port=port)
        try:
            caller.join(10)
            assert result == {"r": "x"}
            resend = restarted.seen[-1]
            assert resend.request_id == broker.seen[0].request_id
            assert resend.attempt >= 1
            assert resend.ttl_ms < broker.seen[0].ttl_ms
            assert resend.routing_id == client.routing_id
            stats = client.stats()
            assert stats["resent"] >= 1
            assert stats["connects"] >= 2
            assert stats["pending"] == 0
        finally:
            restarted.stop()


def test_close_fails_pending_requests():
    broker = FakeBroker(lambda seen: [])
    try:
        client = Client(broker.url, timeout=10)
        outcome = {}

        def call():
            try:
                client.request("svc", 1)
            except Exception as err:
                outcome["err"] = err

        caller = threading.Thread(target=call)
        caller.start()
        must_wait(lambda: len(broker.seen) == 1, "the broker to see the request")
        client.close()
        caller.join(5)
        assert isinstance(outcome["err"], ClientClosed)
        with pytest.raises(ClientClosed):
            client.request("svc", 1)
    finally:
        broker.stop()


def test_service_available_and_status_frames():
    def mmi(seen):
        if seen.service == "mmi.service":
            return [final(seen, b"200" if seen.body == [b"echo"] else b"404")]
        assert unpack(seen.body[0]) == {}
        return [final(seen, pack({"services": {"echo": {"workers": 1}}}))]

    broker = FakeBroker(mmi)
    try:
        with Client(broker.url, timeout=5) as client:
            assert client.service_available("echo") is True
            assert client.service_available("other") is False
            assert client.status()["services"]["echo"]["workers"] == 1
    finally:
        broker.stop()


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        Client("tcp://127.0.0.1:1", timeout=0)
    with Client("tcp://127.0.0.1:1") as client:
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            client.request("svc", 1, timeout=-1)
        with pytest.raises(ValueError, match="needs a service name"):
            client.request("", 1)
    with pytest.raises(zmq.ZMQError):
        Client("not-a-url")


# ----------------------------------------------------------------------------- asyncio


def test_async_request_gather_and_errors(transport):
    async def main(url):
        async with AsyncClient(url, timeout=10, transport=transport) as client:
            results = await asyncio.gather(*[client.request("svc", i) for i in range(200)])
            assert results == list(range(200))
            assert client.pending == 0

    broker = FakeBroker()
    try:
        asyncio.run(main(broker.url))
    finally:
        broker.stop()


@pytest.mark.timeout(30)  # a hang fails here, not a clock check
def test_async_error_codes_stream_and_deadline(transport):
    def behave(seen):
        if seen.service == "busy":
            return [error(seen, "overloaded", "queue full")]
        if seen.service == "stream":
            return [partial(seen, pack("a")), partial(seen, pack("b")), final(seen, pack("z"))]
        if seen.service == "silent":
            return []
        return echo(seen)

    async def main(url):
        async with AsyncClient(url, timeout=5, deadline_grace=0.05, transport=transport) as client:
            with pytest.raises(Overloaded, match="queue full"):
                await client.request("busy", 1)
            assert [p async for p in client.stream("stream", 1)] == ["a", "b", "z"]
            with pytest.raises(DeadlineExceeded, match="reachable"):
                await client.request("silent", 1, timeout=0.3)
            with pytest.raises(DeadlineExceeded):
                async for _ in client.stream("silent", 1, timeout=0.2):
                    pass
            # a cancelled caller's request is forgotten, the client keeps working
            task = asyncio.create_task(client.request("silent", 1))
            await must_wait_async(lambda: client.pending == 1, "the request to be pending")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.pending == 0
            assert await client.request("echo", "ok") == "ok"

    broker = FakeBroker(behave)
    try:
        asyncio.run(main(broker.url))
    finally:
        broker.stop()


def test_async_resend_after_broker_restart(transport):
    broker = FakeBroker(lambda seen: [])
    port = broker.port

    async def main():
        async with AsyncClient(
            broker.url,
            timeout=10,
            heartbeat_interval=0.2,
            heartbeat_timeout=0.6,
            transport=transport,
        ) as client:
            task = asyncio.create_task(client.request("svc", "again"))
            await must_wait_async(
                lambda: broker.seen and client.connected, "the broker to hold the request"
            )
            broker.stop()
            await must_wait_async(lambda: not client.connected, "the client to see it gone")
            restarted = FakeBroker(echo, port=port)
            try:
                assert await asyncio.wait_for(task, 10) == "again"
                assert restarted.seen[-1].attempt >= 1
            finally:
                restarted.stop()

    asyncio.run(main())


def test_async_close_fails_pending(transport):
    broker = FakeBroker(lambda seen: [])

    async def main():
        client = AsyncClient(broker.url, timeout=10, transport=transport)
        task = asyncio.create_task(client.request("svc", 1))
        await must_wait_async(lambda: broker.seen, "the broker to see the request")
        await client.close()
        with pytest.raises(ClientClosed):
            await task

    try:
        asyncio.run(main())
    finally:
        broker.stop()


def test_async_client_refuses_a_second_event_loop(broker, transport):
    client = AsyncClient(broker.url, timeout=5, transport=transport)

    async def use():
        return await client.request("svc", "x")

    assert asyncio.run(use()) == "x"
    with pytest.raises(RuntimeError, match="event loop"):
        asyncio.run(use())


def test_oversized_payload_is_refused_before_sending(broker, transport):
    with Client(broker.url, timeout=5, max_request_bytes=1000) as client:
        with pytest.raises(BadRequest, match="limit is 1000"):
            client.request("svc", b"x" * 2000)
        assert client.request("svc", b"x" * 500) == b"x" * 500
    assert len(broker.seen) == 1

    async def main():
        async with AsyncClient(
            broker.url, timeout=5, max_request_bytes=1000, transport=transport
        ) as aclient:
            with pytest.raises(BadRequest):
                await aclient.request("svc", b"x" * 2000)

    asyncio.run(main())


def test_async_start_connects_before_any_request_and_close_ends_it(broker, transport):
    client = AsyncClient(broker.url, timeout=5, transport=transport)

    async def until_connected() -> None:
        while not client.connected:
            await asyncio.sleep(0.01)

    async def main() -> None:
        assert not client.connected  # nothing made yet: no socket before start()
        await client.start()
        await asyncio.wait_for(until_connected(), 5)  # the handshake ran, with no request
        assert broker.seen == []
        await client.start()  # a second start on the same loop changes nothing
        assert client.stats()["connects"] == 1
        assert await client.request("svc", "hello") == "hello"
        assert broker.seen[0].routing_id == client.routing_id
        await client.close()
        await client.close()  # idempotent
        with pytest.raises(ClientClosed):
            await client.start()
        with pytest.raises(ClientClosed):
            await client.request("svc", "again")

    asyncio.run(main())
    assert len(broker.seen) == 1


def test_async_start_belongs_to_one_loop(broker, transport):
    client = AsyncClient(broker.url, timeout=5, transport=transport)
    asyncio.run(client.start())
    with pytest.raises(RuntimeError, match="event loop"):
        asyncio.run(client.start())
