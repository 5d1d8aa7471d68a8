"""The native ZMTP transport against libzmq (pyzmq ROUTER sockets) and raw TCP peers.

libzmq is the independent reference: whatever frames the native DEALER writes must reach
a libzmq ROUTER exactly as sent, with our routing id, and whatever the ROUTER sends must
come back exactly. Raw peers (asyncio servers written here from spec 37, byte by byte)
play what libzmq will not: a silent peer, a peer that PINGs, one that speaks HTTP.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import zmq

from mole.protocol import AsyncClient
from mole.protocol.errors import DeadlineExceeded
from mole.protocol.zmtp_dealer import ZmtpDealer, tcp_address
from tests.protocol.zmtp_peers import Events, raw_peer
from tests.support.procs import free_port, must_wait_async

pytestmark = pytest.mark.timeout(60)

# --------------------------------------------------------------------------- helpers


class EchoRouter:
    """A libzmq ROUTER on loopback that records each message and echoes it reversed."""

    def __init__(self, port: int | None = None, **options: int) -> None:
        self.port = port or free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.received: list[list[bytes]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._options = options
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.linger = 0
        for option, value in self._options.items():
            sock.setsockopt(getattr(zmq, option), value)
        sock.bind(self.url)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(20):
                    ident, *frames = sock.recv_multipart()
                    self.received.append([ident, *frames])
                    sock.send_multipart([ident, *reversed(frames)])
        finally:
            sock.close(0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# Spec 37, byte by byte: a ROUTER's NULL greeting and READY (the worked example's reply).
ROUTER_GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"NULL" + bytes(16) + b"\x00" + bytes(31)
ROUTER_READY = (
    bytes([0x04, 28, 5]) + b"READY" + bytes([11]) + b"Socket-Type" + bytes([0, 0, 0, 6]) + b"ROUTER"
)


async def handshake_as_router(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Do the NULL handshake as a ROUTER; return the client's READY command frame."""
    writer.write(ROUTER_GREETING)
    greeting = await reader.readexactly(64)
    assert greeting[:1] == b"\xff"
    assert greeting[10:12] == b"\x03\x01"
    head = await reader.readexactly(2)
    assert head[0] == 0x04  # a short command
    ready = head + await reader.readexactly(head[1])
    writer.write(ROUTER_READY)
    return ready


# --------------------------------------------------------------------------- libzmq


MESSAGES = [
    [b""],
    [b"a", b"", b"b" * 255, b"c" * 256, b"d" * 70_000],
    [bytes(range(256)) * 4096],  # 1 MiB, one long frame
    [b"x"] * 40,
]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Run a coroutine on asyncio's loop or on uvloop's (the frontend's)."""
    if request.param == "uvloop":
        import uvloop

        return uvloop.run
    return asyncio.run


def test_multipart_and_long_frames_reach_libzmq_exactly_and_come_back(run):
    router = EchoRouter()

    async def main():
        events = Events()
        dealer = ZmtpDealer(router.url, b"c-native-test")
        dealer.open(asyncio.get_running_loop(), events)
        for message in MESSAGES:  # sent before the handshake: queued, then flushed in order
            dealer.send(message)
        await must_wait_async(lambda: len(events.messages) == len(MESSAGES), "the echoes")
        dealer.close()
        return events

    try:
        events = run(main())
    finally:
        router.stop()
    assert router.received == [[b"c-native-test", *m] for m in MESSAGES]
    assert events.messages == [list(reversed(m)) for m in MESSAGES]
    assert events.log == ["connected"]


def test_libzmq_heartbeats_are_answered():
    """A ROUTER that PINGs every 100 ms and drops a peer silent for 500 ms keeps us: the
    client sends nothing of its own (10 s interval), so only its PONGs keep it alive."""
    router = EchoRouter(HEARTBEAT_IVL=100, HEARTBEAT_TIMEOUT=500)

    async def main():
        events = Events()
        dealer = ZmtpDealer(router.url, b"c-pong", heartbeat_interval=10, heartbeat_timeout=30)
        dealer.open(asyncio.get_running_loop(), events)
        await must_wait_async(lambda: events.log == ["connected"], "the connection")
        await asyncio.sleep(1.5)  # fifteen PINGs, three timeouts' worth
        dealer.send([b"still here"])
        await must_wait_async(lambda: events.messages, "the echo")
        dealer.close()
        return events, dealer.connects

    try:
        events, connects = asyncio.run(main())
    finally:
        router.stop()
    assert events.log == ["connected"]
    assert connects == 1
    assert events.messages == [[b"still here"]]


def test_reconnection_backs_off_and_starts_over_after_a_handshake():
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"

    async def main():
        loop = asyncio.get_running_loop()
        delays: list[float] = []
        real_call_later = loop.call_later

        def recording_call_later(delay, callback, *args):
            if getattr(callback, "__name__", "") == "_dial":
                delays.append(delay)
                delay = 0.01  # record the schedule, do not wait for it
            return real_call_later(delay, callback, *args)

        loop.call_later = recording_call_later  # type: ignore[method-assign]
        events = Events()
        dealer = ZmtpDealer(url, b"c-backoff", reconnect_interval=0.1, reconnect_interval_max=1)
        dealer.open(loop, events)
        await must_wait_async(lambda: len(delays) >= 7, "seven failed attempts")
        refused = list(delays)
        delays.clear()
        router = EchoRouter(port)  # a ROUTER appears on the port being dialled
        try:
            await must_wait_async(lambda: "connected" in events.log, "the connection")
            router.stop()
            await must_wait_async(lambda: events.log[-1] == "disconnected", "the loss")
            await must_wait_async(lambda: len(delays) >= 2, "two more attempts")
        finally:
            router.stop()
            dealer.close()
        return refused, delays

    refused, after = asyncio.run(main())
    assert refused[:7] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert after[:2] == [0.1, 0.2]


def test_native_needs_a_tcp_url_and_a_known_transport_name():
    with pytest.raises(ValueError, match=r'tcp:// addresses only.*transport="zmq"'):
        AsyncClient("ipc:///tmp/broker.sock", transport="native")
    with pytest.raises(ValueError, match="is not tcp://HOST:PORT"):
        tcp_address("tcp://localhost")
    assert tcp_address("tcp://[::1]:5555") == ("::1", 5555)
    with pytest.raises(ValueError, match="unknown bus transport 'carrier-pigeon'"):
        AsyncClient("tcp://127.0.0.1:1", transport="carrier-pigeon")


# --------------------------------------------------------------------------- raw peers


def test_silent_peer_is_dropped_after_the_heartbeat_timeout_and_dialled_again(run):
    """A peer that finishes the handshake and then never answers: PINGs go out at the
    heartbeat interval (spec 37's PING, TTL zero), and past the timeout the connection
    is taken as lost and dialled again."""
    received: list[bytes] = []

    async def silent(reader, writer):
        received.append(await handshake_as_router(reader, writer))
        try:
            while data := await reader.read(4096):
                received.append(data)
        except ConnectionError:
            pass

    async def main():
        server, url = await raw_peer(silent)
        events = Events()
        dealer = ZmtpDealer(url, b"c-silent", heartbeat_interval=0.1, heartbeat_timeout=0.35)
        dealer.open(asyncio.get_running_loop(), events)
        await must_wait_async(lambda: events.log.count("connected") >= 2, "a reconnection")
        dealer.close()
        server.close()
        return events

    events = run(main())
    assert events.log[:3] == ["connected", "disconnected", "connected"]
    assert "heartbeat timeout 0.35 s" in (events.reasons[0] or "")
    ping = bytes([0x04, 7, 4]) + b"PING" + b"\x00\x00"  # command, size 7, [4]"PING", ttl 0
    assert ping in b"".join(received[1:])
    # the client's READY carried its socket type and routing id (Identity)
    assert b"\x0bSocket-Type\x00\x00\x00\x06DEALER" in received[0]
    assert b"\x08Identity\x00\x00\x00\x08c-silent" in received[0]


def test_peer_pings_are_answered_with_their_context():
    pongs: list[bytes] = []

    async def pinging(reader, writer):
        await handshake_as_router(reader, writer)
        writer.write(bytes([0x04, 13, 4]) + b"PING" + b"\x00\x0a" + b"hello!")  # ttl 1 s
        pongs.append(await reader.readexactly(13))

    async def main():
        server, url = await raw_peer(pinging)
        events = Events()
        dealer = ZmtpDealer(url, b"c-ping", heartbeat_interval=10, heartbeat_timeout=30)
        dealer.open(asyncio.get_running_loop(), events)
        await must_wait_async(lambda: pongs, "the PONG")
        dealer.close()
        server.close()

    asyncio.run(main())
    assert pongs == [bytes([0x04, 11, 4]) + b"PONG" + b"hello!"]


@pytest.mark.parametrize(
    ("greeting", "match"),
    [
        (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "does not speak ZMTP"),
        (b"\xff" + bytes(8) + b"\x7f\x01\x05", r"speaks ZMTP 1\.x.*transport=\"zmq\""),
        (ROUTER_GREETING.replace(b"NULL", b"PLAIN"), "wants the b'PLAIN' mechanism"),
    ],
    ids=["http", "zmtp-1", "plain-mechanism"],
)
def test_a_peer_that_speaks_something_else_is_a_clear_error(greeting, match, run):
    async def impostor(reader, writer):
        writer.write(greeting)
        await reader.read(100)

    async def main():
        server, url = await raw_peer(impostor)
        try:
            async with AsyncClient(
                url, timeout=0.4, deadline_grace=0.05, transport="native"
            ) as client:
                with pytest.raises(DeadlineExceeded, match=match):
                    await client.request("svc", 1)
                assert not client.connected
        finally:
            server.close()

    run(main())


def test_a_peer_that_accepts_and_says_nothing_does_not_hold_the_handshake():
    async def mute(reader, writer):
        await reader.read(1000)
        await asyncio.sleep(30)

    async def main():
        server, url = await raw_peer(mute)
        try:
            async with AsyncClient(
                url, timeout=0.6, deadline_grace=0.05, heartbeat_timeout=0.2, transport="native"
            ) as client:
                with pytest.raises(DeadlineExceeded, match=r"did not finish the ZMTP handshake"):
                    await client.request("svc", 1)
        finally:
            server.close()

    asyncio.run(main())
