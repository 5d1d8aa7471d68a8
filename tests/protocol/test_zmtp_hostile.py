"""The native ZMTP transport against hostile or broken peers (security review of #17).

Each peer here is a raw asyncio server written in the test from the specs (ZMTP 3.1 =
spec 37, ZMTP-CURVE = spec 25, CurveZMQ = spec 26), byte by byte, doing what a real
broker never does: a multipart message that never ends, an ERROR after the handshake.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nacl.bindings import (
    crypto_box_beforenm,
    crypto_box_easy,
    crypto_box_easy_afternm,
    crypto_box_keypair,
)
from zmq.utils import z85

from mole.protocol import AsyncClient
from mole.protocol.curve import CurveKeys
from mole.protocol.errors import Forbidden
from mole.protocol.zmtp_dealer import ZmtpDealer
from tests.protocol.zmtp_peers import Events, raw_peer
from tests.support.procs import must_wait_async

pytestmark = pytest.mark.timeout(30)

# Spec 37: a NULL ROUTER's greeting and its READY (Socket-Type ROUTER).
NULL_GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"NULL" + bytes(16) + b"\x00" + bytes(31)
CURVE_GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"CURVE" + bytes(15) + b"\x00" + bytes(31)
ROUTER_PROPERTIES = b"\x0bSocket-Type" + struct.pack("!I", 6) + b"ROUTER"


def frame(body: bytes, *, more: bool = False, command: bool = False) -> bytes:
    """Spec 37 "Framing": flags (bit 0 MORE, bit 1 LONG, bit 2 COMMAND), size, body."""
    flags = (0x01 if more else 0) | (0x04 if command else 0)
    if len(body) > 255:
        return bytes([flags | 0x02]) + struct.pack("!Q", len(body)) + body
    return bytes([flags, len(body)]) + body


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    flags = (await reader.readexactly(1))[0]
    if flags & 0x02:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    else:
        size = (await reader.readexactly(1))[0]
    return await reader.readexactly(size)


async def null_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(NULL_GREETING)
    await reader.readexactly(64)
    assert (await read_frame(reader))[:6] == b"\x05READY"
    writer.write(frame(b"\x05READY" + ROUTER_PROPERTIES, command=True))


def dial_until(
    peer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    until: Callable[[Events], object],
    what: str,
    timeout: float = 20.0,
    *,
    routing_id: bytes,
    **dealer_options: Any,
) -> Events:
    """Dial a raw peer (``peer`` serves each connection) with a :class:`ZmtpDealer` until
    ``until(events)`` holds; return what the dealer reported."""

    async def main() -> Events:
        server, url = await raw_peer(peer)
        events = Events()
        dealer = ZmtpDealer(url, routing_id, **dealer_options)
        dealer.open(asyncio.get_running_loop(), events)
        try:
            await must_wait_async(lambda: until(events), what, timeout=timeout)
        finally:
            dealer.close()
            server.close()
        return events

    return asyncio.run(main())


class CurveServer:
    """The server side of spec 26's handshake, then MESSAGE boxes with short nonces 2, 3..."""

    def __init__(self) -> None:
        self.public, self.secret = crypto_box_keypair()
        client_public, client_secret = crypto_box_keypair()
        self.keys = CurveKeys(
            z85.encode(self.public), z85.encode(client_public), z85.encode(client_secret)
        )

    async def handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CURVE_GREETING)
        await reader.readexactly(64)
        hello = await read_frame(reader)
        assert hello[:6] == b"\x05HELLO"
        self.client_transient = client_t = hello[80:112]
        server_t, server_t_secret = crypto_box_keypair()
        cookie = bytes(96)
        welcome_nonce = b"W" * 16
        box = crypto_box_easy(server_t + cookie, b"WELCOME-" + welcome_nonce, client_t, self.secret)
        writer.write(frame(b"\x07WELCOME" + welcome_nonce + box, command=True))
        initiate = await read_frame(reader)
        assert initiate[:9] == b"\x08INITIATE"
        self.session = crypto_box_beforenm(client_t, server_t_secret)
        ready = crypto_box_easy_afternm(
            ROUTER_PROPERTIES, b"CurveZMQREADY---" + struct.pack("!Q", 1), self.session
        )
        writer.write(frame(b"\x05READY" + struct.pack("!Q", 1) + ready, command=True))
        self.nonce = 2

    def message(self, flags: int, payload: bytes) -> bytes:
        """One MESSAGE (spec 26): short nonce, Box[flags + frame](S'->C')."""
        short = struct.pack("!Q", self.nonce)
        self.nonce += 1
        box = crypto_box_easy_afternm(
            bytes([flags]) + payload, b"CurveZMQMESSAGES" + short, self.session
        )
        return frame(b"\x07MESSAGE" + short + box)


# --------------------------------------------------------------------- unending messages


def test_a_multipart_message_past_the_limit_drops_the_connection_null():
    """The per-frame limit alone let a peer grow one message without end: 1,000-byte
    frames with MORE set, each under the limit, never a last one."""
    sent: list[int] = []

    async def endless(reader, writer):
        await null_handshake(reader, writer)
        for i in range(200):
            writer.write(frame(bytes(1000), more=True))
            sent.append(i)
            try:
                await writer.drain()
            except ConnectionError:
                return
            await asyncio.sleep(0)
        await reader.read(100)

    events = dial_until(
        endless,
        lambda e: "disconnected" in e.log,
        "the drop",
        timeout=5,
        routing_id=b"c-endless",
        max_message_bytes=8000,
        reconnect_interval=5,
    )
    assert events.log[:2] == ["connected", "disconnected"]
    assert "over this connection's limit of 8000 bytes" in (events.reasons[0] or "")
    assert events.messages == []


def test_a_multipart_message_past_the_limit_drops_the_connection_curve():
    """Under CURVE the frames arrive one per MESSAGE box; the client gathers them, and
    the same limit applies to what it gathers."""
    curve = CurveServer()

    async def endless(reader, writer):
        await curve.handshake(reader, writer)
        for _ in range(200):
            writer.write(curve.message(0x01, bytes(1000)))
            try:
                await writer.drain()
            except ConnectionError:
                return
            await asyncio.sleep(0)
        await reader.read(100)

    events = dial_until(
        endless,
        lambda e: "disconnected" in e.log,
        "the drop",
        timeout=5,
        routing_id=b"c-endless",
        curve=curve.keys,
        max_message_bytes=8000,
        reconnect_interval=5,
    )
    assert events.log[:2] == ["connected", "disconnected"]
    assert "over this connection's limit of 8000 bytes" in (events.reasons[0] or "")
    assert events.messages == []


def test_a_message_of_exactly_the_limit_arrives():
    """The bound refuses only what is over it: 8 frames of 1,000 bytes, then one frame of
    8,000, under a limit of 8,000 come through whole, under NULL and under CURVE."""
    curve = CurveServer()

    async def null_peer(reader, writer):
        await null_handshake(reader, writer)
        writer.write(b"".join(frame(bytes(1000), more=i < 7) for i in range(8)))
        writer.write(frame(bytes(8000)))
        await reader.read(100)

    async def curve_peer(reader, writer):
        await curve.handshake(reader, writer)
        writer.write(b"".join(curve.message(int(i < 7), bytes(1000)) for i in range(8)))
        writer.write(curve.message(0, bytes(8000)))
        await reader.read(100)

    async def main():
        got = []
        for peer, keys in ((null_peer, None), (curve_peer, curve.keys)):
            server, url = await raw_peer(peer)
            events = Events()
            dealer = ZmtpDealer(url, b"c-exact", curve=keys, max_message_bytes=8000)
            dealer.open(asyncio.get_running_loop(), events)
            try:
                await must_wait_async(lambda: len(events.messages) == 2, "both", timeout=5)  # noqa: B023
            finally:
                dealer.close()
                server.close()
            got.append(events)
        return got

    for events in asyncio.run(main()):
        assert events.messages == [[bytes(1000)] * 8, [bytes(8000)]]
        assert "disconnected" not in events.log


# --------------------------------------------------------------------- ERROR after READY


def test_an_error_after_the_curve_handshake_is_not_a_refusal():
    """Spec 26's grammar has ERROR only in place of WELCOME or READY; after READY every
    command is a MESSAGE box. An ERROR there is plaintext nobody authenticated (anyone on
    the path can inject it), so it must not fail the client's requests as a refusal of
    its key: the connection is dropped and dialled again like any other loss."""
    curve = CurveServer()
    connections: list[int] = []

    async def injected(reader, writer):
        connections.append(1)
        await curve.handshake(reader, writer)
        if len(connections) == 1:
            writer.write(frame(b"\x05ERROR\x0bbad key (!)", command=True))
        else:
            writer.write(curve.message(0, b"answer"))
        await reader.read(100)

    events = dial_until(
        injected,
        lambda e: e.messages,
        "the answer after redialling",
        routing_id=b"c-inject",
        curve=curve.keys,
        reconnect_interval=0.05,
    )
    assert [e for e in events.log if e.startswith("refused")] == []
    assert events.log[:3] == ["connected", "disconnected", "connected"]
    assert "ERROR after the CURVE handshake" in (events.reasons[0] or "")
    assert events.messages == [[b"answer"]]


def test_a_malformed_command_inside_curve_is_not_quoted_in_the_error():
    """What a CURVE box held is plaintext that travelled encrypted: a malformed command
    inside one drops the connection with an error that does not quote it (errors go to
    logs and to callers)."""
    curve = CurveServer()

    async def peer(reader, writer):
        await curve.handshake(reader, writer)
        writer.write(curve.message(0x02, b"\xffsecret plaintext of the box"))
        await reader.read(100)

    events = dial_until(
        peer,
        lambda e: "disconnected" in e.log,
        "the drop",
        timeout=5,
        routing_id=b"c-quote",
        curve=curve.keys,
        reconnect_interval=5,
    )
    reason = events.reasons[0] or ""
    assert "malformed command inside a CURVE MESSAGE" in reason
    assert "secret" not in reason


def test_an_error_after_the_null_handshake_is_not_a_refusal():
    """Spec 37: ERROR is "an explicit fatal error response during the mechanism
    handshake" (null = ready *message | error). After READY it is a broken peer, not a
    refusal of this client."""
    connections: list[int] = []

    async def late_error(reader, writer):
        connections.append(1)
        await null_handshake(reader, writer)
        if len(connections) == 1:
            writer.write(frame(b"\x05ERROR\x04nope", command=True))
        else:
            writer.write(frame(b"answer"))
        await reader.read(100)

    events = dial_until(
        late_error,
        lambda e: e.messages,
        "the answer after redialling",
        routing_id=b"c-late",
        reconnect_interval=0.05,
    )
    assert [e for e in events.log if e.startswith("refused")] == []
    assert events.log[:3] == ["connected", "disconnected", "connected"]
    assert "ERROR after the NULL handshake" in (events.reasons[0] or "")
    assert events.messages == [[b"answer"]]


def test_a_refusal_reason_cannot_forge_log_lines():
    """The reason in a handshake ERROR is the peer's text, logged and handed to callers:
    spec 37 allows printable ASCII only, so a newline or an escape code shows escaped."""

    async def refuser(reader, writer):
        writer.write(NULL_GREETING)
        await reader.readexactly(64)
        await read_frame(reader)
        reason = b"no\nCRITICAL forged line\x1b[2J"
        writer.write(frame(b"\x05ERROR" + bytes([len(reason)]) + reason, command=True))
        await reader.read(100)

    events = dial_until(
        refuser,
        lambda e: len(e.log) >= 2,
        "the refusal",
        timeout=5,
        routing_id=b"c-refused",
        reconnect_interval=5,
    )
    refusal = events.log[0]
    assert refusal.endswith("refused the NULL handshake: no\\x0aCRITICAL forged line\\x1b[2J"), (
        refusal
    )
    assert "\n" not in refusal
    assert "\x1b" not in refusal
    assert "\n" not in (events.reasons[0] or "")


def test_a_peer_that_floods_pings_and_reads_nothing_cannot_grow_our_buffer():
    """Each PING asks for a PONG; a peer that sends PINGs and never reads would make the
    client buffer a PONG each without bound. Sized past what the kernel's buffers hold
    (twice this machine's largest TCP send buffer), the flood must get PONGs for well
    under all its PINGs."""
    context = b"c" * 16
    ping = frame(b"\x04PING\x00\x00" + context, command=True)  # 25 octets
    pong = frame(b"\x04PONG" + context, command=True)  # 23 octets
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        send_buffer_max = int(f.read().split()[2])
    count = 2 * send_buffer_max // len(pong)
    flooded, got = asyncio.Event(), []

    async def flood(reader, writer):
        await null_handshake(reader, writer)
        for start in range(0, count, 10_000):
            writer.write(ping * min(10_000, count - start))
            await writer.drain()
        writer.write(frame(b"done"))
        await flooded.wait()
        total = 0
        while data := await _read_until_quiet(reader):
            total += len(data)
        got.append(total)

    async def main():
        listening = socket.socket()
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no room here
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        server = await asyncio.start_server(flood, sock=listening)
        url = f"tcp://127.0.0.1:{listening.getsockname()[1]}"
        events = Events()
        dealer = ZmtpDealer(url, b"c-flood", heartbeat_interval=30, heartbeat_timeout=60)
        dealer.open(asyncio.get_running_loop(), events)
        try:
            await must_wait_async(lambda: events.messages, "the flood's end")
            flooded.set()
            await must_wait_async(lambda: got, "the peer's count of PONGs")
        finally:
            dealer.close()
            server.close()

    asyncio.run(main())
    assert got[0] % len(pong) == 0
    pongs = got[0] // len(pong)
    assert 0 < pongs < count * 3 // 4, (pongs, count)


async def _read_until_quiet(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(1 << 20), 0.5)
    except TimeoutError:
        return b""


def test_requests_failed_by_a_refusal_are_not_sent_on_a_later_connection():
    """A refused handshake fails every pending request (``Forbidden``); those requests
    must then not reach the broker when a later handshake succeeds (the key admitted
    meanwhile): their callers were told they failed, so nothing may run them."""
    received: list[bytes] = []  # frames, in order, on the admitted connection
    connections: list[int] = []

    async def refuse_then_admit(reader, writer):
        connections.append(1)
        if len(connections) == 1:
            writer.write(NULL_GREETING)
            await reader.readexactly(64)
            await read_frame(reader)
            writer.write(frame(b"\x05ERROR\x0bnot allowed", command=True))
            await reader.read(100)
            return
        await null_handshake(reader, writer)
        try:
            while True:
                received.append(await read_frame(reader))
        except asyncio.IncompleteReadError:
            return  # the client closed

    async def main():
        server, url = await raw_peer(refuse_then_admit)
        client = AsyncClient(
            url, timeout=5, reconnect_interval=0.05, heartbeat_timeout=5, transport="native"
        )
        try:
            with pytest.raises(Forbidden, match="not allowed"):
                await client.request("svc-refused", 1)
            await must_wait_async(lambda: client.connected, "the admitted connection")
            later = asyncio.ensure_future(client.request("svc-later", 2, timeout=2))
            await must_wait_async(lambda: received, "a request on the admitted connection")
            later.cancel()
        finally:
            await client.close()
            server.close()

    asyncio.run(main())
    seen = b"".join(received)
    assert b"svc-later" in seen
    assert b"svc-refused" not in seen


def test_a_stalled_loop_does_not_fail_a_handshake_that_arrived_meanwhile():
    """The frontend runs on uvloop, which runs due timers before it reads. A CPU step
    that stalls the loop past the handshake's deadline while the broker's answer arrives
    must not drop that connection as a peer that "did not finish the ZMTP handshake"."""
    import threading
    import time

    import uvloop

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    url = f"tcp://127.0.0.1:{listening.getsockname()[1]}"
    heard, stalling = threading.Event(), threading.Event()

    def broker() -> None:  # a thread, so it answers while the loop is stalled
        connection, _ = listening.accept()
        with connection:
            received = b""
            while len(received) < 64 + 2:  # the client's greeting and READY's head
                received += connection.recv(4096)
            heard.set()
            stalling.wait(5)
            connection.sendall(
                NULL_GREETING + frame(b"\x05READY" + ROUTER_PROPERTIES, command=True)
            )
            connection.recv(4096)

    peer = threading.Thread(target=broker, daemon=True)
    peer.start()

    async def main():
        events = Events()
        dealer = ZmtpDealer(
            url, b"c-stall", heartbeat_interval=0.1, heartbeat_timeout=0.2, reconnect_interval=5
        )
        loop = asyncio.get_running_loop()
        dealer.open(loop, events)
        await must_wait_async(heard.is_set, "the client's greeting")
        wake, waker = socket.socketpair()

        def cpu_step() -> None:  # an I/O callback: the timers come next, then the reads
            loop.remove_reader(wake.fileno())
            stalling.set()
            time.sleep(0.6)

        loop.add_reader(wake.fileno(), cpu_step)
        waker.send(b"x")
        try:
            await must_wait_async(lambda: events.log, "the handshake's outcome", timeout=5)
        finally:
            dealer.close()
            wake.close()
            waker.close()
        return events

    events = uvloop.run(main())
    peer.join(5)
    listening.close()
    assert events.log == ["connected"], events.reasons


# --------------------------------------------------------------------- operator's keys


@pytest.mark.parametrize(
    "bad",
    [
        "~" + "x" * 39,  # a character outside Z85's alphabet
        "#" * 40,  # Z85's alphabet, but each group decodes past 32 bits
        "x" * 41,  # not a multiple of 5
        "x" * 35,  # decodes to 28 octets
    ],
)
def test_a_bad_secret_key_is_refused_when_made_and_never_shown(bad):
    """A key that is not 40 characters of Z85 (RFC 32) is a clear ValueError when the
    transport is made, naming which key, and the message carries no part of it."""
    public, _ = crypto_box_keypair()
    secret = bad.encode()
    keys = CurveKeys(z85.encode(public), z85.encode(public), secret)
    with pytest.raises(ValueError, match="the client's secret key") as caught:
        ZmtpDealer("tcp://127.0.0.1:1", b"c-keys", curve=keys)
    message = str(caught.value)
    assert bad not in message
    assert bad[:5] not in message
    assert "126" not in message  # the code of "~", which KeyError would show


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:70000", "tcp://127.0.0.1:0"])
def test_a_port_outside_tcp_s_range_is_refused_when_made(url):
    """A typo in the port must fail when the client is made, not become a connection
    that fails and is dialled again for as long as the process lives."""
    with pytest.raises(ValueError, match="is not tcp://HOST:PORT"):
        ZmtpDealer(url, b"c-port")
