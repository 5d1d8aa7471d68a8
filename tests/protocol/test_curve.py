"""CURVE on the client side: keys from `mole keys generate` files; a wrong key never connects."""

from __future__ import annotations

import asyncio

import pytest
import zmq
import zmq.auth

from mole.protocol import AsyncClient, Client
from mole.protocol.curve import CurveKeyError, CurveKeys
from mole.protocol.errors import DeadlineExceeded
from tests.protocol.fakebroker import FakeBroker

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


@pytest.fixture
def keys(tmp_path):
    for name in ("broker", "client", "intruder"):
        zmq.auth.create_certificates(str(tmp_path), name)
    return tmp_path


def test_client_talks_to_a_curve_broker(keys):
    _, broker_secret = zmq.auth.load_certificate(str(keys / "broker.key_secret"))
    broker = FakeBroker(curve_secret=broker_secret)
    try:
        curve = CurveKeys.from_files(keys / "broker.key", keys / "client.key_secret")
        with Client(broker.url, timeout=5, curve=curve) as client:
            assert client.request("svc", {"secret": True}) == {"secret": True}
    finally:
        broker.stop()


def test_wrong_server_key_never_connects(keys):
    _, broker_secret = zmq.auth.load_certificate(str(keys / "broker.key_secret"))
    broker = FakeBroker(curve_secret=broker_secret)
    try:
        curve = CurveKeys.from_files(keys / "intruder.key", keys / "client.key_secret")
        with (
            Client(broker.url, timeout=5, curve=curve, deadline_grace=0.05) as client,
            pytest.raises(DeadlineExceeded, match="never connected"),
        ):
            client.request("svc", 1, timeout=0.5)
        assert broker.seen == []
    finally:
        broker.stop()


def test_public_file_instead_of_secret_is_a_clear_error(keys):
    with pytest.raises(CurveKeyError, match="no secret key"):
        CurveKeys.from_files(keys / "broker.key", keys / "client.key")
    with pytest.raises(CurveKeyError, match="cannot load"):
        CurveKeys.from_files(keys / "missing.key", keys / "client.key_secret")


# ------------------------------------------------------------------ the native transport


def test_native_client_talks_to_a_libzmq_curve_router(keys):
    """The whole CURVE handshake and MESSAGE boxes against libzmq, with heartbeats (PING
    and PONG travel inside the encryption) and a payload of many long frames."""
    _, broker_secret = zmq.auth.load_certificate(str(keys / "broker.key_secret"))
    broker = FakeBroker(curve_secret=broker_secret)
    curve = CurveKeys.from_files(keys / "broker.key", keys / "client.key_secret")

    async def main():
        async with AsyncClient(
            broker.url,
            timeout=5,
            curve=curve,
            transport="native",
            heartbeat_interval=0.05,
            heartbeat_timeout=0.3,
        ) as client:
            assert await client.request("svc", {"secret": True}) == {"secret": True}
            big = bytes(range(256)) * 2000
            assert await client.request("svc", big) == big
            await asyncio.sleep(0.8)  # PINGs answered inside CURVE: the link stays up
            many = await asyncio.gather(*[client.request("svc", i) for i in range(50)])
            assert many == list(range(50))
            return client.stats()

    try:
        stats = asyncio.run(main())
    finally:
        broker.stop()
    assert stats["connects"] == 1
    assert stats["resent"] == 0
    assert broker.seen[0].routing_id.startswith(b"c-")
    # what libzmq decrypted is what was sent: the request frames are well-formed MDP
    assert broker.raw[0][:2] == [b"MDPC02", b"\x01"]


@pytest.mark.timeout(20)  # "no hang": a hang fails here
def test_native_client_with_a_wrong_server_key_is_refused_with_a_clear_error(keys):
    _, broker_secret = zmq.auth.load_certificate(str(keys / "broker.key_secret"))
    broker = FakeBroker(curve_secret=broker_secret)
    curve = CurveKeys.from_files(keys / "intruder.key", keys / "client.key_secret")

    async def main():
        async with AsyncClient(
            broker.url, timeout=5, curve=curve, transport="native", deadline_grace=0.05
        ) as client:
            with pytest.raises(DeadlineExceeded) as info:
                await client.request("svc", 1, timeout=0.5)
            assert not client.connected
            return str(info.value)

    try:
        message = asyncio.run(main())
    finally:
        broker.stop()
    assert "never connected" in message
    assert "could not open this client's HELLO" in message
    assert broker.seen == []


def test_native_curve_client_against_a_plain_broker_says_so(keys):
    broker = FakeBroker()
    curve = CurveKeys.from_files(keys / "broker.key", keys / "client.key_secret")

    async def main():
        async with AsyncClient(
            broker.url, timeout=5, curve=curve, transport="native", deadline_grace=0.05
        ) as client:
            with pytest.raises(DeadlineExceeded, match="does not use CURVE"):
                await client.request("svc", 1, timeout=0.5)

    try:
        asyncio.run(main())
    finally:
        broker.stop()
    assert broker.seen == []
