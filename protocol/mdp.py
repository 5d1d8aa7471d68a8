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

The broker also serves the Majordomo peers that exist outside this project, on the same
socket, through :func:`decode_inbound` (one fast decoder for every framing it reads) and
:func:`to_client` / :func:`to_worker` (the answer in the framing the peer used):

* MDP/0.1 (ZeroMQ RFC 7), spoken by the zguide's clients and workers: an empty frame, then
  ``MDPC01 service body...`` from a client (REQ socket; the reply is ``"" MDPC01 service
  body...``, there are no partials), or ``MDPW01 command ...`` from a worker, whose commands
  are READY 0x01, REQUEST 0x02, REPLY 0x03, HEARTBEAT 0x04, DISCONNECT 0x05;
* MDP/0.2 behind an empty delimiter frame (clients on REQ sockets, majortomo's peers): the
  RFC 18 frames after one empty frame, answered with the same empty frame first.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol, TypeVar

from mole.protocol.envelope import VERSION, pack
from mole.protocol.errors import MalformedMessage

CLIENT_HEADER = b"MDPC02"
WORKER_HEADER = b"MDPW02"
#: MDP/0.1 (RFC 7) protocol headers.
CLIENT_HEADER_01 = b"MDPC01"
WORKER_HEADER_01 = b"MDPW01"

#: Services whose names start with this prefix are answered by the broker itself (RFC 8).
MMI_PREFIX = "mmi."
MMI_SERVICE = "mmi.service"
MMI_STATUS = "mmi.status"
#: Broker management (ours): take one worker out of service, and back (docs/interfaces.md).
MMI_DRAIN = "mmi.drain"
MMI_RESUME = "mmi.resume"

#: Longest service name we accept, in bytes. Keys such as
#: ``unsloth/mistral-7b-instruct-v0.3-bnb-4bit`` are far shorter.
MAX_SERVICE_LENGTH = 255


class Framing(IntEnum):
    """How a peer frames its messages; the broker answers each peer in its own framing."""

    MDP02 = 0  #: RFC 18 as written: no empty frame before the header
    MDP02_DELIMITED = 1  #: RFC 18 frames behind one empty delimiter frame
    MDP01 = 2  #: RFC 7: an empty frame, then MDPC01 / MDPW01 and the 0.1 grammar


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
#: RFC 7 worker command bytes, mapped onto their 0.2 meaning (0.1 REPLY is a FINAL).
_WORKER_COMMANDS_01 = {
    b"\x01": WorkerCommand.READY,
    b"\x02": WorkerCommand.REQUEST,
    b"\x03": WorkerCommand.FINAL,
    b"\x04": WorkerCommand.HEARTBEAT,
    b"\x05": WorkerCommand.DISCONNECT,
}
_WORKER_BYTES_01 = {command: byte for byte, command in _WORKER_COMMANDS_01.items()}

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


# --------------------------------------------------------------------------- the broker's view


class UnreadableMessage(MalformedMessage):
    """A message the broker cannot read, with what it could tell about the sender.

    ``role`` is ``"client"`` or ``"worker"`` when the protocol header was recognisable
    (the broker then answers in that protocol: an error reply or DISCONNECT), else None;
    ``framing`` is how the sender framed it; ``service`` the raw service frame of a client
    message when there was one (an error reply needs it).
    """

    def __init__(
        self,
        reason: str,
        *,
        role: str | None = None,
        framing: Framing = Framing.MDP02,
        service: bytes | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.role = role
        self.framing = framing
        self.service = service


@dataclass(slots=True)
class ClientRequest:
    """A client REQUEST as the broker reads it, in any framing.

    ``service_frame`` is the raw service frame (the reply echoes it); ``body`` the frames
    after it, as received (payload frames may be ``zmq.Frame`` objects).
    """

    service: str
    service_frame: bytes
    body: list[Any]
    framing: Framing


@dataclass(slots=True)
class WorkerEvent:
    """A worker message as the broker reads it, in any framing (0.1 REPLY is FINAL)."""

    command: WorkerCommand
    framing: Framing
    service: str = ""
    client: bytes = b""
    body: list[Any] = field(default_factory=list)
    metadata: bytes | None = None


R_co = TypeVar("R_co", covariant=True)
_MDP02 = Framing.MDP02
_MDP02_DELIMITED = Framing.MDP02_DELIMITED
_MDP01 = Framing.MDP01
_FINAL = WorkerCommand.FINAL
#: Service frames already read: the hot path skips decoding and checking them again.
_known_names: dict[bytes, str] = {}
_KNOWN_NAMES_LIMIT = 4096


def _inbound_service_name(frame: bytes) -> str:
    """:func:`_service_name`, remembered for up to _KNOWN_NAMES_LIMIT distinct frames."""
    name = _known_names.get(frame)
    if name is None:
        name = _service_name(frame)
        if len(_known_names) < _KNOWN_NAMES_LIMIT:
            _known_names[bytes(frame)] = name
    return name


class InboundHandler(Protocol[R_co]):
    """What the broker does with each message it can read (``broker.engine`` implements it).

    :func:`read_inbound` parses a message and calls one of these methods with the parsed
    fields, so no event object is built between the parser and the broker. ``peer`` is the
    sender's routing id; ``now`` and ``key`` (the sender's CURVE key, or None) are passed
    through from the caller of :func:`read_inbound` untouched.
    """

    def on_request(
        self,
        client: bytes,
        service: str,
        service_frame: bytes,
        body: list[Any],
        framing: Framing,
        now: float,
        key: str | None,
    ) -> R_co:
        """A client REQUEST for ``service`` (``service_frame`` as received)."""
        ...

    def on_reply(
        self,
        worker: bytes,
        command: WorkerCommand,
        ticket: bytes,
        body: list[Any],
        framing: Framing,
        now: float,
        key: str | None,
    ) -> R_co:
        """A worker's PARTIAL or FINAL (``command``) for the client address ``ticket``."""
        ...

    def on_ready(
        self,
        worker: bytes,
        service: str,
        metadata: bytes | None,
        framing: Framing,
        now: float,
        key: str | None,
    ) -> R_co:
        """A worker's READY for ``service``, with this project's metadata frame if any."""
        ...

    def on_heartbeat(self, worker: bytes, framing: Framing, now: float, key: str | None) -> R_co:
        """A worker's HEARTBEAT."""
        ...

    def on_disconnect(self, worker: bytes, framing: Framing, now: float, key: str | None) -> R_co:
        """A worker's DISCONNECT."""
        ...


def read_inbound(
    frames: list[Any], handler: InboundHandler[R_co], peer: bytes, now: float, key: str | None
) -> R_co:
    """Read one message that reached the broker's ROUTER (routing id removed) and hand its
    fields to the ``handler`` method for it; return what that method returns.

    Accepts MDP/0.2 with or without a leading empty delimiter and MDP/0.1. The first few
    frames must be ``bytes`` (header, command, service or address, empty frame); later
    ones may be ``zmq.Frame`` objects and are passed through untouched.

    Raises:
        UnreadableMessage: anything none of these grammars allows, with the reason and,
            when the header was recognisable, the sender's role and framing (the handler
            is not called then).
    """
    count = len(frames)
    # fast paths for the two messages of every request: RFC 18 REQUEST and FINAL
    if count >= 4:
        head = frames[0]
        if head == CLIENT_HEADER:
            if frames[1] == CLIENT_REQUEST:
                name = _known_names.get(frames[2])
                if name is not None:
                    return handler.on_request(peer, name, frames[2], frames[3:], _MDP02, now, key)
        elif head == WORKER_HEADER and frames[1] == W_FINAL and frames[2] and not frames[3]:
            return handler.on_reply(peer, _FINAL, frames[2], frames[4:], _MDP02, now, key)
    elif count == 0:
        raise UnreadableMessage("empty message")
    head = frames[0]
    start = 0
    framing = _MDP02
    if not head:
        if count < 2:
            raise UnreadableMessage("a lone empty frame")
        head = frames[1]
        start = 1
        framing = _MDP01 if head in (CLIENT_HEADER_01, WORKER_HEADER_01) else _MDP02_DELIMITED
    if head == CLIENT_HEADER or (head == CLIENT_HEADER_01 and framing is _MDP01):
        service, service_frame, body = _inbound_client(frames, start, framing)
        return handler.on_request(peer, service, service_frame, body, framing, now, key)
    if head == WORKER_HEADER or (head == WORKER_HEADER_01 and framing is _MDP01):
        return _inbound_worker(frames, start, framing, handler, peer, now, key)
    if head in (CLIENT_HEADER_01, WORKER_HEADER_01):
        raise UnreadableMessage(f"MDP/0.1 (RFC 7) needs an empty frame before {head!r}")
    shown = bytes(head[:16]) if isinstance(head, bytes) else bytes(head.buffer[:16])
    raise UnreadableMessage(
        f"no Majordomo protocol header (MDPC01/MDPC02/MDPW01/MDPW02), got {shown!r}"
    )


def _inbound_client(
    frames: list[Any], start: int, framing: Framing
) -> tuple[str, bytes, list[Any]]:
    """(service name, service frame, body) of a client REQUEST in ``framing``."""
    if framing is _MDP01:  # "" MDPC01 service body...
        if len(frames) < start + 3:
            service = frames[start + 1] if len(frames) > start + 1 else None
            raise UnreadableMessage(
                "MDP/0.1 client request needs a service frame and a body",
                role="client",
                framing=framing,
                service=service,
            )
        service_frame = frames[start + 1]
        body = frames[start + 2 :]
    else:  # [""] MDPC02 0x01 service body...
        count = len(frames) - start
        service = frames[start + 2] if count >= 3 else None
        if count < 2 or frames[start + 1] != CLIENT_REQUEST:
            command = bytes(frames[start + 1][:4]) if count >= 2 else b""
            raise UnreadableMessage(
                f"client command {command!r}: a client may only send REQUEST (0x01)",
                role="client",
                framing=framing,
                service=service,
            )
        if count < 4:
            raise UnreadableMessage(
                "client REQUEST without a service frame and a body",
                role="client",
                framing=framing,
                service=service,
            )
        service_frame = service
        body = frames[start + 3 :]
    try:
        name = _inbound_service_name(service_frame)
    except MalformedMessage as err:
        raise UnreadableMessage(
            str(err), role="client", framing=framing, service=service_frame
        ) from None
    return name, service_frame, body


def _inbound_worker(
    frames: list[Any],
    start: int,
    framing: Framing,
    handler: InboundHandler[R_co],
    peer: bytes,
    now: float,
    key: str | None,
) -> R_co:
    count = len(frames) - start
    if count < 2:
        raise UnreadableMessage("worker message without a command", role="worker", framing=framing)
    table = _WORKER_COMMANDS_01 if framing is _MDP01 else _WORKER_COMMANDS
    command = table.get(frames[start + 1])
    if command is None:
        raise UnreadableMessage(
            f"unknown worker command {bytes(frames[start + 1][:4])!r}",
            role="worker",
            framing=framing,
        )
    rest = count - 2
    first = start + 2
    if command is WorkerCommand.FINAL or command is WorkerCommand.PARTIAL:
        if rest < 2 or not frames[first] or frames[first + 1] != EMPTY:
            raise UnreadableMessage(
                f"{command.name} needs a client address frame and an empty frame",
                role="worker",
                framing=framing,
            )
        return handler.on_reply(
            peer, command, frames[first], frames[first + 2 :], framing, now, key
        )
    if command is WorkerCommand.HEARTBEAT or command is WorkerCommand.DISCONNECT:
        if rest:
            raise UnreadableMessage(
                f"{command.name} carries {rest} unexpected frame(s)", role="worker", framing=framing
            )
        if command is WorkerCommand.HEARTBEAT:
            return handler.on_heartbeat(peer, framing, now, key)
        return handler.on_disconnect(peer, framing, now, key)
    if command is WorkerCommand.READY:
        most = 1 if framing is _MDP01 else 2  # the metadata frame is ours, 0.2 only
        if not 1 <= rest <= most:
            raise UnreadableMessage(
                "READY needs a service frame"
                + (" and at most one metadata frame" if most == 2 else ""),
                role="worker",
                framing=framing,
            )
        try:
            name = _inbound_service_name(frames[first])
        except MalformedMessage as err:
            raise UnreadableMessage(str(err), role="worker", framing=framing) from None
        metadata = bytes(frames[first + 1]) if rest == 2 else None
        return handler.on_ready(peer, name, metadata, framing, now, key)
    raise UnreadableMessage("a worker may not send REQUEST", role="worker", framing=framing)


class _EventBuilder:
    """An :class:`InboundHandler` that returns the message as a :class:`ClientRequest` or
    :class:`WorkerEvent` (for :func:`decode_inbound`)."""

    def on_request(
        self,
        client: bytes,
        service: str,
        service_frame: bytes,
        body: list[Any],
        framing: Framing,
        now: float,
        key: str | None,
    ) -> ClientRequest | WorkerEvent:
        return ClientRequest(service, service_frame, body, framing)

    def on_reply(
        self,
        worker: bytes,
        command: WorkerCommand,
        ticket: bytes,
        body: list[Any],
        framing: Framing,
        now: float,
        key: str | None,
    ) -> ClientRequest | WorkerEvent:
        return WorkerEvent(command, framing, "", ticket, body)

    def on_ready(
        self,
        worker: bytes,
        service: str,
        metadata: bytes | None,
        framing: Framing,
        now: float,
        key: str | None,
    ) -> ClientRequest | WorkerEvent:
        return WorkerEvent(WorkerCommand.READY, framing, service=service, metadata=metadata)

    def on_heartbeat(
        self, worker: bytes, framing: Framing, now: float, key: str | None
    ) -> ClientRequest | WorkerEvent:
        return WorkerEvent(WorkerCommand.HEARTBEAT, framing)

    def on_disconnect(
        self, worker: bytes, framing: Framing, now: float, key: str | None
    ) -> ClientRequest | WorkerEvent:
        return WorkerEvent(WorkerCommand.DISCONNECT, framing)


_EVENTS = _EventBuilder()


def decode_inbound(frames: list[Any]) -> ClientRequest | WorkerEvent:
    """:func:`read_inbound`'s reading of ``frames`` as one object: for tools, tests and the
    broker's rare paths (an oversized message); the broker's loop uses :func:`read_inbound`.

    Raises:
        UnreadableMessage: as :func:`read_inbound`.
    """
    return read_inbound(frames, _EVENTS, b"", 0.0, None)


def to_client(
    framing: Framing, command: ClientCommand, service: bytes, body: list[Any]
) -> list[Any] | None:
    """The frames of a broker -> client message in the client's framing.

    None when the framing cannot carry it (MDP/0.1 has no PARTIAL). An empty body gets
    one empty frame: RFC 18's PARTIAL and FINAL carry at least one body frame.
    """
    if not body:
        body = [EMPTY]
    if framing == Framing.MDP02:
        return [CLIENT_HEADER, _CLIENT_BYTES[command], service, *body]
    if framing == Framing.MDP01:
        if command != ClientCommand.FINAL:
            return None
        return [EMPTY, CLIENT_HEADER_01, service, *body]
    return [EMPTY, CLIENT_HEADER, _CLIENT_BYTES[command], service, *body]


def to_worker(
    framing: Framing, command: WorkerCommand, client: bytes = b"", body: list[Any] | None = None
) -> list[Any]:
    """The frames of a broker -> worker REQUEST, HEARTBEAT or DISCONNECT in its framing."""
    if framing == Framing.MDP01:
        head = [EMPTY, WORKER_HEADER_01, _WORKER_BYTES_01[command]]
    elif framing == Framing.MDP02:
        head = [WORKER_HEADER, _WORKER_BYTES[command]]
    else:
        head = [EMPTY, WORKER_HEADER, _WORKER_BYTES[command]]
    if command == WorkerCommand.REQUEST:
        return [*head, client, EMPTY, *(body or ())]
    return head


def request_head(framing: Framing) -> tuple[bytes, ...]:
    """The frames before the client address of a broker -> worker REQUEST in ``framing``
    (the broker keeps one per worker: ``[*head, client, b"", *body]`` is the REQUEST)."""
    return tuple(to_worker(framing, WorkerCommand.REQUEST)[:-2])


_CLIENT_BYTES = {c: bytes([c]) for c in ClientCommand}
_WORKER_BYTES = {c: bytes([c]) for c in WorkerCommand}

#: Longest service name (in characters) a new service may have; see check_service_name.
SERVICE_NAME_RULE = (
    f"1 to {MAX_SERVICE_LENGTH} bytes of UTF-8, printable, no whitespace-only name, "
    "no control or format characters"
)


def check_service_name(name: str) -> str | None:
    """Why ``name`` may not be a service, or None when it may.

    A service name is shown in logs and ``mole status`` and used as a key: it must be
    printable (no control, format or line-separator characters, no NUL), not blank, and
    at most MAX_SERVICE_LENGTH bytes. Checked once per new name, not per message.
    """
    if not name.strip():
        return "service name is blank"
    if len(name.encode("utf-8")) > MAX_SERVICE_LENGTH:
        return f"service name is longer than {MAX_SERVICE_LENGTH} bytes"
    if not name.isprintable():
        bad = next(ch for ch in name if not ch.isprintable())
        kind = unicodedata.category(bad)
        return f"service name contains the non-printable character U+{ord(bad):04X} ({kind})"
    return None


# --------------------------------------------------------------------------- raw replies

#: The last key/value of a reply header the broker writes in front of a reply from a
#: worker that does not speak this project's envelope (a plain RFC 18 worker): msgpack of
#: ``"raw": true``. The frames after such a header are the worker's body, as it sent it.
RAW_REPLY_MARK = b"\xa3raw\xc3"


def raw_reply_header(request_id: str) -> bytes:
    """The reply header the broker puts before a plain RFC 18 worker's reply body.

    It carries the request id (so our clients can match the reply) and ends with
    :data:`RAW_REPLY_MARK` (so they return the frames as they are instead of decoding them).
    """
    return pack({"v": VERSION, "id": request_id, "ok": True, "raw": True})


def is_raw_reply(header: bytes) -> bool:
    """True when a reply header is :func:`raw_reply_header`'s (the body is not ours)."""
    return header.endswith(RAW_REPLY_MARK)
