"""The seam between the asyncio client and what carries its frames to the broker.

``AsyncClient`` keeps the requests: correlation, deadlines, resends. A transport only
moves multipart messages and says when the link comes and goes, through four calls on
:class:`TransportEvents`. Two transports fit behind it:

* ``"zmq"`` (:class:`protocol.zmq_transport.ZmqTransport`): a pyzmq DEALER socket driven
  from the loop; libzmq's I/O thread does the TCP work. Any ZeroMQ address (``ipc://``
  too), and the reference behaviour.
* ``"native"`` (:class:`protocol.zmtp_dealer.ZmtpDealer`): ZMTP 3.1 written on asyncio,
  the loop's own socket carrying the frames with no thread in between; ``tcp://`` only.

:func:`make_transport` picks one by name; :data:`ENV_TRANSPORT` names it for processes
configured through the environment (the frontend).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

#: Environment variable naming the asyncio client's transport: ``native`` or ``zmq``.
ENV_TRANSPORT = "MOLE_BUS_TRANSPORT"
TRANSPORTS = ("native", "zmq")
#: What an AsyncClient uses when nobody says (see docs/design.md for the measurements).
DEFAULT_TRANSPORT = "native"


class TransportEvents(Protocol):
    """What a transport tells the client. All calls come on the client's event loop."""

    def frames_arrived(self, frames: list[bytes]) -> None:
        """One multipart message from the broker."""

    def connected(self) -> None:
        """A connection (and its security handshake) completed."""

    def disconnected(self, reason: str | None) -> None:
        """The connection was lost, or an attempt failed (``reason`` says why, if known)."""

    def refused(self, reason: Exception) -> None:
        """The broker refused this client's handshake (wrong key): fail what waits."""


class BusTransport(Protocol):
    """Carries one client's multipart messages to one broker, reconnecting by itself."""

    name: str

    def open(self, loop: asyncio.AbstractEventLoop, events: TransportEvents) -> None:
        """Start connecting on ``loop`` (the running one)."""

    def send(self, frames: list[bytes]) -> None:
        """Send one message without blocking (queued until the first connection)."""

    def close(self) -> None:
        """Stop: close the connection, dial no more. Idempotent."""


def curve_available() -> bool:
    """Whether PyNaCl, which the native CURVE mechanism boxes with, is installed."""
    import importlib.util

    return importlib.util.find_spec("nacl") is not None


def choose_transport(
    value: str | None, url: str, *, curve: bool, env: Mapping[str, str] | None = None
) -> str:
    """The transport for a client of ``url``: ``value`` if given, else
    ``MOLE_BUS_TRANSPORT``, else :data:`DEFAULT_TRANSPORT` where it can serve (a
    ``tcp://`` address, and PyNaCl installed when ``curve``) and ``"zmq"`` elsewhere.

    A transport named explicitly is used as named, so a native one asked for an ``ipc://``
    address fails with a message rather than quietly becoming another.

    Raises:
        ValueError: not one of :data:`TRANSPORTS`.
    """
    if value is None:
        import os

        value = (os.environ if env is None else env).get(ENV_TRANSPORT) or None
    if value is not None:
        name = value.strip().lower()
        if name not in TRANSPORTS:
            raise ValueError(
                f"unknown bus transport {value!r} (transport= or {ENV_TRANSPORT}): "
                f"use one of {', '.join(TRANSPORTS)}"
            )
        return name
    if DEFAULT_TRANSPORT == "native" and (
        not url.startswith("tcp://") or (curve and not curve_available())
    ):
        return "zmq"
    return DEFAULT_TRANSPORT
