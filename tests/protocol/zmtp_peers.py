"""Helpers of the native transport's tests: an event recorder and raw TCP peers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Events:
    """A TransportEvents that records everything, for driving ZmtpDealer directly."""

    def __init__(self) -> None:
        self.messages: list[list[bytes]] = []
        self.log: list[str] = []
        self.reasons: list[str | None] = []

    def frames_arrived(self, frames: list[bytes]) -> None:
        self.messages.append(frames)

    def connected(self) -> None:
        self.log.append("connected")

    def disconnected(self, reason: str | None) -> None:
        self.log.append("disconnected")
        self.reasons.append(reason)

    def refused(self, reason: Exception) -> None:
        self.log.append(f"refused: {reason}")


async def raw_peer(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]):
    """A TCP server on loopback running ``handler`` per connection; returns (server, url)."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"tcp://127.0.0.1:{port}"
