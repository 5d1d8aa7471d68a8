"""Majordomo Protocol 0.2 (ZeroMQ RFC 18) framing, and RFC 8 (MMI) constants.

This module is the whole of the wire grammar and nothing else: it turns frame lists into
typed messages and back, and raises :class:`MalformedMessage` for anything the RFC does
not allow. It knows no sockets, so the broker, the worker runtime and the clients (sync
and asyncio) all share one parser, and fuzzing it needs no network.

Frames as the broker's ROUTER sees them, after the peer's routing id (RFC 18, 0.2 has no
empty delimiter frame)::

    client -> broker   MDPC02 0x01 service body...              REQUEST
    broker -> client   MDPC02 0x02 service body...              PARTIAL
                       MDPC02 0x03 service body...              FINAL
    worker -> broker   MDPW02 0x01 service [metadata]           READY
                       MDPW02 0x03 client "" body...            PARTIAL
                       MDPW02 0x04 client "" body...            FINAL
                       MDPW02 0x05                              HEARTBEAT
                       MDPW02 0x06                              DISCONNECT
    broker -> worker   MDPW02 0x02 client "" body...            REQUEST
                       MDPW02 0x05 / 0x06                       HEARTBEAT / DISCONNECT

The optional metadata frame after READY's service is this project's extension (see
docs/interfaces.md); a READY without it is a plain RFC 18 worker with one slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from mole.protocol.errors import MalformedMessage

CLIENT_HEADER = b"MDPC02"
WORKER_HEADER = b"MDPW02"

#: Services whose names start with this prefix are answered by the broker itself (RFC 8).
MMI_PREFIX = "mmi."
MMI_SERVICE = "mmi.service"
MMI_STATUS = "mmi.status"

#: Longest service name we accept, in bytes. Keys such as
#: ``unsloth/mistral-7b-instruct-v0.3-bnb-4bit`` are far shorter.
MAX_SERVICE_LENGTH = 255


class ClientCommand(IntEnum):
    REQUEST = 0x01
    PARTIAL = 0x02
    FINAL = 0x03


class WorkerCommand(IntEnum):
    READY = 0x01
    REQUEST = 0x02
    PARTIAL = 0x03
    FINAL = 0x04
    HEARTBEAT = 0x05
    DISCONNECT = 0x06


_CLIENT_COMMANDS = {bytes([c]): ClientCommand(c) for c in ClientCommand}
_WORKER_COMMANDS = {bytes([c]): WorkerCommand(c) for c in WorkerCommand}

# Pre-built frames: the hot paths send these without allocating.
CLIENT_REQUEST = bytes([ClientCommand.REQUEST])
CLIENT_PARTIAL = bytes([ClientCommand.PARTIAL])
CLIENT_FINAL = bytes([ClientCommand.FINAL])
W_READY = bytes([WorkerCommand.READY])
W_REQUEST = bytes([WorkerCommand.REQUEST])
W_PARTIAL = bytes([WorkerCommand.PARTIAL])
W_FINAL = bytes([WorkerCommand.FINAL])
W_HEARTBEAT = bytes([WorkerCommand.HEARTBEAT])
W_DISCONNECT = bytes([WorkerCommand.DISCONNECT])
EMPTY = b""


def _service_name(frame: bytes) -> str:
    if not frame:
        raise MalformedMessage("empty service name")
    if len(frame) > MAX_SERVICE_LENGTH:
        raise MalformedMessage(f"service name longer than {MAX_SERVICE_LENGTH} bytes")
    try:
        return bytes(frame).decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedMessage("service name is not UTF-8") from err


# --------------------------------------------------------------------------- client side


@dataclass(slots=True)
class ClientMessage:
    """A message between a client and the broker (either direction)."""

    command: ClientCommand
    service: str
    body: list[bytes] = field(default_factory=list)


def encode_client(command: ClientCommand, service: str, body: list[bytes]) -> list[bytes]:
    """Frames for a client message, without the ROUTER routing id."""
    return [CLIENT_HEADER, bytes([command]), service.encode("utf-8"), *body]


def decode_client(frames: list[bytes]) -> ClientMessage:
    """Parse a client message (routing id already removed).

    Raises:
        MalformedMessage: wrong header, unknown command, missing service or body.
    """
    if len(frames) < 3:
        raise MalformedMessage(f"client message has {len(frames)} frames, needs at least 3")
    if frames[0] != CLIENT_HEADER:
        raise MalformedMessage(f"bad client protocol header {bytes(frames[0][:16])!r}")
    command = _CLIENT_COMMANDS.get(bytes(frames[1]))
    if command is None:
        raise MalformedMessage(f"unknown client command {bytes(frames[1][:4])!r}")
    service = _service_name(frames[2])
    body = list(frames[3:])
    if command == ClientCommand.REQUEST and not body:
        raise MalformedMessage("client REQUEST without a body")
    return ClientMessage(command, service, body)


# --------------------------------------------------------------------------- worker side


@dataclass(slots=True)
class WorkerMessage:
    """A message between a worker and the broker (either direction).

    ``client`` is the opaque reply address for REQUEST/PARTIAL/FINAL; ``service`` and
    ``metadata`` are set for READY only.
    """

    command: WorkerCommand
    service: str = ""
    client: bytes = b""
    body: list[bytes] = field(default_factory=list)
    metadata: bytes | None = None


def encode_worker(
    command: WorkerCommand,
    *,
    service: str = "",
    client: bytes = b"",
    body: list[bytes] | None = None,
    metadata: bytes | None = None,
) -> list[bytes]:
    """Frames for a worker-protocol message, without the ROUTER routing id."""
    head = [WORKER_HEADER, bytes([command])]
    if command == WorkerCommand.READY:
        frames = [*head, service.encode("utf-8")]
        if metadata is not None:
            frames.append(metadata)
        return frames
    if command in (WorkerCommand.REQUEST, WorkerCommand.PARTIAL, WorkerCommand.FINAL):
        return [*head, client, EMPTY, *(body or [])]
    return head


def decode_worker(frames: list[bytes]) -> WorkerMessage:
    """Parse a worker-protocol message (routing id already removed).

    Raises:
        MalformedMessage: wrong header, unknown command, or frames that do not match
            the command's grammar.
    """
    if len(frames) < 2:
        raise MalformedMessage(f"worker message has {len(frames)} frames, needs at least 2")
    if frames[0] != WORKER_HEADER:
        raise MalformedMessage(f"bad worker protocol header {bytes(frames[0][:16])!r}")
    command = _WORKER_COMMANDS.get(bytes(frames[1]))
    if command is None:
        raise MalformedMessage(f"unknown worker command {bytes(frames[1][:4])!r}")
    rest = frames[2:]
    if command == WorkerCommand.READY:
        if not 1 <= len(rest) <= 2:
            raise MalformedMessage("READY needs a service frame and at most one metadata frame")
        metadata = bytes(rest[1]) if len(rest) == 2 else None
        return WorkerMessage(command, service=_service_name(rest[0]), metadata=metadata)
    if command in (WorkerCommand.REQUEST, WorkerCommand.PARTIAL, WorkerCommand.FINAL):
        if len(rest) < 2:
            raise MalformedMessage(f"{command.name} needs client address and empty frames")
        if not rest[0]:
            raise MalformedMessage(f"{command.name} has an empty client address")
        if rest[1] != EMPTY:
            raise MalformedMessage(f"{command.name} is missing the empty frame after the client")
        return WorkerMessage(command, client=bytes(rest[0]), body=list(rest[2:]))
    if rest:
        raise MalformedMessage(f"{command.name} carries {len(rest)} unexpected frames")
    return WorkerMessage(command)
