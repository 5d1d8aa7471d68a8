"""The native CURVE client against a CURVE server written here from rfc.zeromq.org specs
25/26 (PyNaCl boxes, every field checked as the spec lays it out).

libzmq is the reference for interoperability (``test_curve.py``); this peer checks what
libzmq would not tell: the HELLO's exact layout and signature box, the vouch in the
INITIATE, the client's metadata, and that the client refuses a replayed server nonce
and a tampered box.
"""

from __future__ import annotations

import asyncio
import struct

import pytest
from nacl.bindings import (
    crypto_box_beforenm,
    crypto_box_easy,
    crypto_box_easy_afternm,
    crypto_box_keypair,
    crypto_box_open_easy,
    crypto_box_open_easy_afternm,
)
from zmq.utils import z85

from mole.protocol.curve import CurveKeys
from mole.protocol.zmtp_dealer import ZmtpDealer
from tests.protocol.zmtp_peers import Events, raw_peer
from tests.support.procs import must_wait_async

pytestmark = pytest.mark.timeout(30)

SERVER_GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"CURVE" + bytes(15) + b"\x01" + bytes(31)


def frame(body: bytes, *, command: bool) -> bytes:
    flags = 0x04 if command else 0x00
    if len(body) > 255:
        return bytes([flags | 0x02]) + struct.pack("!Q", len(body)) + body
    return bytes([flags, len(body)]) + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    flags = (await reader.readexactly(1))[0]
    if flags & 0x02:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    else:
        size = (await reader.readexactly(1))[0]
    return flags, await reader.readexactly(size)


def metadata(**props: bytes) -> bytes:
    out = b""
    for name, value in props.items():
        key = name.replace("_", "-").encode()
        out += bytes([len(key)]) + key + struct.pack("!I", len(value)) + value
    return out


class SpecServer:
    """One CURVE server connection, step by step as spec 26 describes it."""

    def __init__(self, replay: bool = False, tamper: bool = False) -> None:
        self.public, self.secret = crypto_box_keypair()
        self.replay, self.tamper = replay, tamper
        self.seen: dict[str, object] = {}

    async def __call__(self, reader, writer) -> None:
        writer.write(SERVER_GREETING)
        greeting = await reader.readexactly(64)
        self.seen["mechanism"] = greeting[12:32].rstrip(b"\x00")
        flags, hello = await read_frame(reader)
        # HELLO: [5]"HELLO", version 1.0, 72 zero octets, C', short nonce, signature box
        assert flags == 0x04
        assert len(hello) == 200
        assert hello[:6] == b"\x05HELLO"
        assert hello[6:8] == b"\x01\x00"
        assert hello[8:80] == bytes(72)
        client_t, nonce = hello[80:112], hello[112:120]
        signature = crypto_box_open_easy(
            hello[120:200], b"CurveZMQHELLO---" + nonce, client_t, self.secret
        )
        assert signature == bytes(64)
        self.seen["hello_nonce"] = int.from_bytes(nonce, "big")
        # WELCOME: long nonce, Box[S' + cookie](S->C')
        server_t, server_t_secret = crypto_box_keypair()
        cookie = bytes(16) + bytes(80)  # opaque to the client; returned as is
        long_nonce = b"L" * 16
        box = crypto_box_easy(server_t + cookie, b"WELCOME-" + long_nonce, client_t, self.secret)
        writer.write(frame(b"\x07WELCOME" + long_nonce + box, command=True))
        # INITIATE: [8]"INITIATE", cookie, short nonce, Box[C + vouch + metadata](C'->S')
        flags, initiate = await read_frame(reader)
        assert flags & 0x04
        assert initiate[:9] == b"\x08INITIATE"
        assert initiate[9:105] == cookie
        nonce = initiate[105:113]
        self.seen["initiate_nonce"] = int.from_bytes(nonce, "big")
        session = crypto_box_beforenm(client_t, server_t_secret)
        opened = crypto_box_open_easy_afternm(initiate[113:], b"CurveZMQINITIATE" + nonce, session)
        client_permanent, vouch, props = opened[:32], opened[32:128], opened[128:]
        # the vouch: Box[C' + S](C->S') under "VOUCH---" + its long nonce
        vouched = crypto_box_open_easy(
            vouch[16:], b"VOUCH---" + vouch[:16], client_permanent, server_t_secret
        )
        assert vouched == client_t + self.public
        self.seen["client_key"] = client_permanent
        self.seen["metadata"] = props
        # READY: short nonce 1, Box[metadata](S'->C')
        ready = crypto_box_easy_afternm(
            metadata(Socket_Type=b"ROUTER"), b"CurveZMQREADY---" + struct.pack("!Q", 1), session
        )
        writer.write(frame(b"\x05READY" + struct.pack("!Q", 1) + ready, command=True))
        # one message each way: MESSAGE boxes carry a flags octet and the frame
        client_frames = []
        while True:
            _, message = await read_frame(reader)
            assert message[:8] == b"\x07MESSAGE"
            nonce = message[8:16]
            plain = crypto_box_open_easy_afternm(message[16:], b"CurveZMQMESSAGEC" + nonce, session)
            if plain[0] & 0x02:
                continue  # a PING inside the encryption
            client_frames.append(plain[1:])
            if not plain[0] & 0x01:
                break
        self.seen["frames"] = client_frames
        counter = 2
        for part in (b"\x01first", b"\x00second"):
            short = struct.pack("!Q", counter)
            box = crypto_box_easy_afternm(part, b"CurveZMQMESSAGES" + short, session)
            if self.tamper:
                box = box[:-1] + bytes([box[-1] ^ 1])
            writer.write(frame(b"\x07MESSAGE" + short + box, command=False))
            if not self.replay:
                counter += 1
        await reader.read(1000)


@pytest.mark.parametrize("fault", [None, "replay", "tamper"])
def test_curve_client_follows_the_spec_and_refuses_replays_and_tampering(fault):
    server = SpecServer(replay=fault == "replay", tamper=fault == "tamper")
    client_public, client_secret = crypto_box_keypair()
    keys = CurveKeys(
        z85.encode(server.public), z85.encode(client_public), z85.encode(client_secret)
    )

    async def main():
        listener, url = await raw_peer(server)
        events = Events()
        dealer = ZmtpDealer(url, b"c-spec", curve=keys, reconnect_interval=5)
        dealer.open(asyncio.get_running_loop(), events)
        dealer.send([b"hello", b"x" * 300])
        if fault is None:
            await must_wait_async(lambda: events.messages, "the server's message")
        else:
            await must_wait_async(lambda: "disconnected" in events.log, "the refusal")
        dealer.close()
        listener.close()
        return events

    events = asyncio.run(main())
    assert server.seen["mechanism"] == b"CURVE"
    assert server.seen["hello_nonce"] == 1
    assert server.seen["initiate_nonce"] == 2
    assert server.seen["client_key"] == client_public
    assert b"\x0bSocket-Type\x00\x00\x00\x06DEALER" in server.seen["metadata"]
    assert b"\x08Identity\x00\x00\x00\x06c-spec" in server.seen["metadata"]
    assert server.seen["frames"] == [b"hello", b"x" * 300]
    if fault is None:
        assert events.messages == [[b"first", b"second"]]
    elif fault == "replay":
        assert events.messages == []
        assert "reuses nonce 2" in (events.reasons[0] or "")
    else:
        assert events.messages == []
        assert "does not open" in (events.reasons[0] or "")
