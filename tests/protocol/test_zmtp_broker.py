"""The native transport against the real broker process: plain and CURVE, and a restart.

Everything is real: ``python -m mole.broker`` and ``python -m mole.worker.echo`` on
loopback; CURVE keys made as ``mole up`` makes them (``mole keys generate`` for the
broker, certificates for the peers, an allow-list folder).
"""

from __future__ import annotations

import asyncio

import pytest

from mole.protocol import AsyncClient
from mole.protocol.curve import CurveKeys
from mole.protocol.errors import DeadlineExceeded, Forbidden
from tests.protocol.busprocs import Procs, kill
from tests.security.conftest import Secure
from tests.support.procs import free_port, must_wait_async

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.close()


def test_native_client_through_the_broker_and_across_its_restart(procs):
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = procs.broker(port)
    procs.echo(url, "echo", slots=8, partials=0)

    async def main():
        nonlocal broker
        async with AsyncClient(
            url,
            timeout=20,
            heartbeat_interval=0.2,
            heartbeat_timeout=0.6,
            reconnect_interval_max=0.3,
            transport="native",
        ) as client:
            await must_wait_async(
                lambda: client.connected, "the handshake with the broker", timeout=20
            )
            while not await client.service_available("echo", timeout=5):
                await asyncio.sleep(0.1)
            replies = await asyncio.gather(*[client.request("echo", i) for i in range(200)])
            assert [r["echo"] for r in replies] == list(range(200))
            big = "ü" * 100_000  # long frames both ways
            assert (await client.request("echo", big))["echo"] == big
            parts = [p async for p in client.stream("echo", {"_echo": {"partials": 2}})]
            assert [p.get("partial") for p in parts[:2]] == [0, 1]

            kill(broker)  # the broker dies; the client sees the silence and redials
            await must_wait_async(lambda: not client.connected, "the loss", timeout=10)
            pending = asyncio.create_task(client.request("echo", "after the restart"))
            await must_wait_async(lambda: client.pending == 1, "the request to wait")
            broker = procs.broker(port)
            reply = await asyncio.wait_for(pending, 30)
            assert reply["echo"] == "after the restart"
            return client.stats()

    stats = asyncio.run(main())
    assert stats["connects"] >= 2
    assert stats["resent"] >= 1
    assert stats["pending"] == 0


@pytest.fixture
def secure(tmp_path):
    env = Secure(tmp_path)
    yield env
    env.close()


def test_native_curve_client_of_the_real_broker(secure):
    secure.allow_keys("worker-a", "client-a")
    secure.start()
    secure.worker("worker-a", "echo")
    allowed = CurveKeys.from_files(secure.keys / "broker.key", secure.keys / "client-a.key_secret")
    unknown = CurveKeys.from_files(secure.keys / "broker.key", secure.keys / "client-b.key_secret")
    wrong_server = CurveKeys.from_files(
        secure.keys / "intruder.key", secure.keys / "client-a.key_secret"
    )

    async def served():
        # no PINGs of its own (10 s): only its PONGs to the broker's PINGs keep it alive
        async with AsyncClient(
            secure.url,
            timeout=20,
            curve=allowed,
            transport="native",
            heartbeat_interval=10,
            heartbeat_timeout=30,
        ) as c:
            while not await c.service_available("echo", timeout=5):
                await asyncio.sleep(0.1)
            replies = await asyncio.gather(*[c.request("echo", {"n": i}) for i in range(50)])
            assert [r["echo"] for r in replies] == [{"n": i} for i in range(50)]
            # the broker PINGs every 0.5 s and drops a peer silent for 1.5 s: our PONGs,
            # inside CURVE, keep the connection
            await asyncio.sleep(2.0)
            assert (await c.request("echo", "still"))["echo"] == "still"
            return c.stats()

    async def refused(keys, expected, match):
        async with AsyncClient(
            secure.url, timeout=3, curve=keys, transport="native", deadline_grace=0.05
        ) as c:
            with pytest.raises(expected, match=match):
                await c.request("echo", 1, timeout=2)
            assert not c.connected

    stats = asyncio.run(served())
    assert stats["connects"] == 1
    # a key the broker does not allow: its authenticator answers ERROR, so the request
    # fails at once with the reason instead of waiting for its deadline
    asyncio.run(refused(unknown, Forbidden, "refused the CURVE handshake"))
    asyncio.run(refused(wrong_server, DeadlineExceeded, "could not open this client's HELLO"))
