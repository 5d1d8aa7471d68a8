"""Driving :class:`mole.broker.engine.BrokerEngine` in-process with a fake clock.

Messages are written here as the raw frames the RFCs give (bytes literals) and handed to
the real decoder (``mdp.read_inbound``), which calls the engine's method for each with a
time the test chooses; what the engine returns is checked as frames again. No sockets, no sleeps.
"""

from __future__ import annotations

from typing import Any

from mole.broker.admission import Admission
from mole.broker.engine import BrokerEngine
from mole.broker.settings import BrokerSettings
from mole.protocol import mdp
from tests.support.peers import pack
from tests.support.peers import unpack as unpack  # re-exported for the engine tests

HEARTBEAT = 1.0
LIVENESS = 3

# RFC 18 (MDP/0.2) frames, written out from the RFC text.
C02 = b"MDPC02"
W02 = b"MDPW02"
REQUEST, PARTIAL_C, FINAL_C = b"\x01", b"\x02", b"\x03"
READY, W_REQUEST, W_PARTIAL, W_FINAL, W_HEARTBEAT, W_DISCONNECT = (
    b"\x01",
    b"\x02",
    b"\x03",
    b"\x04",
    b"\x05",
    b"\x06",
)
# RFC 7 (MDP/0.1): an empty frame, then the header; worker commands 1..5.
C01 = b"MDPC01"
W01 = b"MDPW01"
W01_READY, W01_REQUEST, W01_REPLY, W01_HEARTBEAT, W01_DISCONNECT = (
    b"\x01",
    b"\x02",
    b"\x03",
    b"\x04",
    b"\x05",
)


def header(rid: str, ttl_ms: int | None = 10_000, attempt: int = 0) -> bytes:
    """Our request header, written as docs/interfaces.md gives it."""
    h: dict[str, Any] = {"v": 1, "id": rid, "attempt": attempt}
    if ttl_ms is not None:
        h["ttl"] = ttl_ms
    return pack(h)


def reply_header(rid: str) -> bytes:
    return pack({"v": 1, "id": rid, "ok": True})


class Harness:
    """One engine, a fake clock, and helpers that speak frames to it."""

    def __init__(
        self,
        admission: Admission | None = None,
        **overrides: Any,
    ) -> None:
        overrides.setdefault("heartbeat_interval", HEARTBEAT)
        overrides.setdefault("liveness", LIVENESS)
        overrides.setdefault("default_deadline", 30.0)
        self.settings = BrokerSettings(bind="inproc://unused", **overrides).validated()
        self.now = 1000.0
        self.engine = BrokerEngine(
            self.settings, self.now, admission=admission, peer_address=lambda _id: "127.0.0.1"
        )
        self.sent: list[tuple[bytes, list[bytes]]] = []

    # ------------------------------------------------------------------ time
    def advance(self, seconds: float) -> list[tuple[bytes, list[bytes]]]:
        """Move the clock and run the timers; return what they sent."""
        self.now += seconds
        self.engine.on_tick(self.now)
        return self._record()

    # ------------------------------------------------------------------ peers
    def send(
        self, identity: bytes, frames: list[bytes], key: str | None = None
    ) -> list[tuple[bytes, list[bytes]]]:
        """Hand one message (frames after the routing id) to the engine, as the shell does."""
        try:
            mdp.read_inbound(frames, self.engine, identity, self.now, key)
        except mdp.UnreadableMessage as err:
            self.engine.on_unreadable(identity, err, "test", self.now)
        return self._record()

    def ready(self, identity: bytes, service: str, slots: int | None = None, **meta: Any) -> None:
        frames = [W02, READY, service.encode()]
        if slots is not None or meta:
            frames.append(pack({"slots": slots or 1, **meta}))
        assert self.send(identity, frames) == []

    def request(
        self, client: bytes, service: str, rid: str, payload: Any = "p", ttl_ms: int | None = 10_000
    ) -> list[tuple[bytes, list[bytes]]]:
        return self.send(
            client, [C02, REQUEST, service.encode(), header(rid, ttl_ms), pack(payload)]
        )

    def status(self) -> dict[str, Any]:
        return self.engine.status(self.now)

    def _record(self) -> list[tuple[bytes, list[bytes]]]:
        """The messages the engine queued since the last call, as (routing id, frames)."""
        out = self.engine.take_outgoing()
        messages = [(identity, [bytes(f) for f in frames]) for identity, frames, _req in out]
        self.sent.extend(messages)
        return messages


def dispatched(messages: list[tuple[bytes, list[bytes]]]) -> list[tuple[bytes, bytes, list]]:
    """(worker, ticket, body) of every RFC 18 REQUEST among ``messages``."""
    return [
        (identity, frames[2], frames[4:])
        for identity, frames in messages
        if frames[:2] == [W02, W_REQUEST]
    ]


def only(messages: list[tuple[bytes, list[bytes]]]) -> tuple[bytes, list[bytes]]:
    assert len(messages) == 1, messages
    return messages[0]
