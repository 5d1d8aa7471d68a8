"""Request correlation shared by the blocking and the asyncio client; no sockets here.

Both clients keep many requests in flight on one DEALER socket. This module holds what
they share: the table of pending requests keyed by request id, the frames of a request
(recomputed on every resend so the header carries the *remaining* time-to-live and the
next attempt number), the dispatch of a reply to whoever waits for it, and the state of
the link to the broker, which makes a client-side deadline message say whether the broker
could be reached at all. Keeping it free of I/O lets the sync client's I/O thread and the
asyncio client's reader task run the same logic, and lets unit tests drive it directly.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, overload

from mole.protocol import mdp
from mole.protocol.envelope import RequestHeader, decode_reply_header, unpack
from mole.protocol.errors import (
    BadRequest,
    DeadlineExceeded,
    MalformedMessage,
    MoleError,
    RequestError,
    UnknownService,
    error_for_code,
)

log = logging.getLogger("mole.client")

#: Extra time a client waits past a request's deadline before giving up by itself, so the
#: broker's own, more specific answer at the deadline (``no_worker``: nothing registered;
#: ``deadline_exceeded``: the worker was too slow) arrives first when the broker is up.
DEFAULT_DEADLINE_GRACE_S = 0.25


#: Largest request payload a client sends: the broker's default message limit (16 MiB)
#: less room for the envelope frames.
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024 - 4096


class ClientClosed(MoleError):
    """The client was closed while the request was still waiting for its answer."""


@dataclass(frozen=True, slots=True)
class RawReply:
    """A reply from a worker that does not speak this project's envelope.

    A plain Majordomo (RFC 18, or RFC 7) worker answers with whatever frames it likes; the
    broker puts a reply header marked raw in front (``mdp.raw_reply_header``) so the
    client can still match it to its request. ``request()`` then returns this object and
    ``stream()`` yields one per PARTIAL and for the FINAL, with the worker's frames exactly
    as sent, rather than trying to decode them as msgpack.
    """

    frames: tuple[bytes, ...]


class _RawBody(list[bytes]):
    """Body frames that came behind a raw reply header (see :class:`RawReply`)."""


class Sink(Protocol):
    """Where the replies of one request go. Called from the thread that reads the socket."""

    def on_partial(self, body: list[bytes]) -> None: ...

    def on_final(self, body: list[bytes]) -> None: ...

    def on_error(self, error: BaseException) -> None: ...


@dataclass(slots=True, eq=False)
class Pending:
    """One request that has not had its final answer yet."""

    request_id: str
    service: str
    service_frame: bytes
    body: list[bytes]  # the frames after the header (the payload)
    timeout: float
    deadline: float  # time.monotonic() the request's ttl runs out
    expires: float  # when the client stops waiting: deadline + grace
    sink: Sink
    attempt: int = 0


def new_routing_id() -> bytes:
    """A stable identity for one client socket, so the broker can de-duplicate resends.

    libzmq reserves routing ids that start with a zero byte; ours start with ``c``.
    """
    return b"c-" + uuid.uuid4().hex[:20].encode("ascii")


class LinkState:
    """Whether the client's connection to the broker is up, as the socket monitor says."""

    __slots__ = ("changed_at", "connected", "connects", "ever_connected", "problem", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.connected = False
        self.ever_connected = False
        self.changed_at = time.monotonic()
        self.connects = 0
        #: Why the last connection or attempt failed, when the transport knows (the native
        #: one does: a peer that is not ZMTP, a refused CURVE key); said in deadline errors.
        self.problem: str | None = None

    def up(self) -> bool:
        """Record a completed handshake; True when it is a *re*connection (resend then)."""
        again = self.ever_connected
        self.connected = True
        self.ever_connected = True
        self.changed_at = time.monotonic()
        self.connects += 1
        self.problem = None
        return again

    def down(self, problem: str | None = None) -> None:
        if problem is not None:
            self.problem = problem
        if self.connected:
            self.connected = False
            self.changed_at = time.monotonic()

    def describe(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        since = now - self.changed_at
        if self.connected:
            return f"the broker at {self.url} is reachable (connected for {since:.1f} s)"
        why = f"; last failure: {self.problem}" if self.problem else ""
        if self.ever_connected:
            return (
                f"the broker at {self.url} is unreachable (connection lost {since:.1f} s ago, "
                f"still reconnecting{why})"
            )
        return (
            f"the broker at {self.url} is unreachable (never connected in {since:.1f} s; "
            f"is it running and is the address right?{why})"
        )


class Correlator:
    """The pending-request table of one client socket. Thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        deadline_grace: float = DEFAULT_DEADLINE_GRACE_S,
        max_body_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.link = LinkState(url)
        self.deadline_grace = deadline_grace
        self.max_body_bytes = max_body_bytes
        self._pending: dict[str, Pending] = {}
        self._lock = threading.Lock()
        # Ids only need to be unique per routing id; a short random prefix keeps them
        # unique even if a routing id were reused by a later client.
        self._prefix = f"{os.getpid():x}{uuid.uuid4().hex[:6]}-"
        self._counter = itertools.count(1)
        self.dropped = 0  # replies that matched no pending request (late, duplicate, junk)
        self.resent = 0

    def __len__(self) -> int:
        return len(self._pending)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: pending requests, resends, dropped replies, link state."""
        return {
            "pending": len(self._pending),
            "resent": self.resent,
            "dropped_replies": self.dropped,
            "connected": self.link.connected,
            "connects": self.link.connects,
        }

    def open(self, service: str, body: list[bytes], timeout: float, sink: Sink) -> Pending:
        """Register a new request; the caller then sends :meth:`frames` of it."""
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if not service:
            raise ValueError("a request needs a service name")
        service_frame = service.encode("utf-8")
        if len(service_frame) > mdp.MAX_SERVICE_LENGTH:
            raise ValueError(f"service name longer than {mdp.MAX_SERVICE_LENGTH} bytes")
        size = sum(len(frame) for frame in body)
        if size > self.max_body_bytes:
            # NOTE: the broker drops the *connection* of a peer that sends a frame over its
            # limit, which would disturb every request on this shared socket; refuse here.
            raise BadRequest(
                f"request payload is {size} bytes; the limit is "
                f"{self.max_body_bytes} (max_request_bytes, and the broker's "
                "--max-message-bytes)"
            )
        now = time.monotonic()
        deadline = now + timeout
        pending = Pending(
            request_id=self._prefix + format(next(self._counter), "x"),
            service=service,
            service_frame=service_frame,
            body=body,
            timeout=timeout,
            deadline=deadline,
            expires=deadline + self.deadline_grace,
            sink=sink,
        )
        with self._lock:
            self._pending[pending.request_id] = pending
        return pending

    def frames(self, pending: Pending, now: float | None = None) -> list[bytes]:
        """The REQUEST frames for ``pending``, with the time left as its ttl."""
        now = time.monotonic() if now is None else now
        ttl_ms = max(1, int((pending.deadline - now) * 1000))
        header = RequestHeader(pending.request_id, ttl_ms, pending.attempt).encode()
        return [
            mdp.CLIENT_HEADER,
            mdp.CLIENT_REQUEST,
            pending.service_frame,
            header,
            *pending.body,
        ]

    def resend_frames(self, now: float | None = None) -> list[list[bytes]]:
        """Frames to resend every pending request whose deadline allows, attempt + 1."""
        now = time.monotonic() if now is None else now
        with self._lock:
            live = [p for p in self._pending.values() if p.deadline > now]
        out = []
        for pending in live:
            pending.attempt += 1
            out.append(self.frames(pending, now))
        self.resent += len(out)
        return out

    def take(self, request_id: str) -> Pending | None:
        """Remove and return a pending request; None if it already ended."""
        with self._lock:
            return self._pending.pop(request_id, None)

    def get(self, request_id: str) -> Pending | None:
        return self._pending.get(request_id)

    def dispatch(self, frames: list[bytes]) -> None:
        """Route one message from the broker to the request it answers.

        Anything that is not a well-formed reply to a pending request is counted and
        dropped: late answers after a client-side deadline, a second answer after a
        resend, or junk. It never raises.
        """
        try:
            message = mdp.decode_client(frames)
            if message.command == mdp.ClientCommand.REQUEST or not message.body:
                raise MalformedMessage(f"unexpected {message.command.name} from the broker")
            header = decode_reply_header(message.body[0])
        except MalformedMessage as err:
            self.dropped += 1
            log.warning("dropping a malformed message from the broker: %s", err)
            return
        rid = header.request_id
        body = message.body[1:]
        if header.ok and mdp.is_raw_reply(bytes(message.body[0])):
            body = _RawBody(body)
        if message.command == mdp.ClientCommand.PARTIAL and header.ok:
            pending = self._pending.get(rid)
            if pending is None:
                self.dropped += 1
                return
            pending.sink.on_partial(body)
            return
        pending = self.take(rid)
        if pending is None:
            self.dropped += 1
            log.debug("dropping an answer to request %s, which is no longer pending", rid)
            return
        if header.ok:
            pending.sink.on_final(body)
        else:
            pending.sink.on_error(
                error_for_code(
                    header.code or "internal",
                    header.message or "",
                    request_id=rid,
                    details=header.details,
                )
            )

    def deadline_error(self, pending: Pending) -> DeadlineExceeded:
        """The client-side deadline's exception; says whether the broker was reachable."""
        resends = f", {pending.attempt} resend(s)" if pending.attempt else ""
        return DeadlineExceeded(
            f"no answer from service {pending.service!r} within {pending.timeout:g} s "
            f"(client-side deadline{resends}); {self.link.describe()}",
            request_id=pending.request_id,
        )

    def fail_all(self, error_factory: Callable[[Pending], BaseException]) -> int:
        """End every pending request with ``error_factory(pending)``; returns how many."""
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for p in pending:
            p.sink.on_error(error_factory(p))
        return len(pending)


@overload
def decode_payload(body: list[bytes], *, raw: Literal[True]) -> bytes | RawReply: ...


@overload
def decode_payload(body: list[bytes], *, raw: Literal[False] = False) -> Any: ...


def decode_payload(body: list[bytes], *, raw: bool = False) -> Any:
    """The reply payload of a final or partial body (frames after the reply header).

    A plain worker's reply (behind a raw reply header) is returned as a :class:`RawReply`.
    """
    if isinstance(body, _RawBody):
        return RawReply(tuple(bytes(frame) for frame in body))
    if raw:
        return bytes(body[0]) if body else b""
    if not body:
        return None
    return unpack(body[0])


def decode_reply(service: str, body: list[bytes]) -> Any:
    """The payload of a final reply to ``request(service, ...)``.

    The broker answers an ``mmi.*`` service it does not implement with the RFC 8 body
    ``"501"``, which is not msgpack: that becomes :class:`UnknownService`.
    """
    if service.startswith(mdp.MMI_PREFIX) and body and bytes(body[0]) == b"501":
        raise UnknownService(f"the broker does not implement {service!r} (RFC 8 answer 501)")
    return decode_payload(body)


def check_timeout(timeout: float | None, default: float) -> float:
    timeout = default if timeout is None else float(timeout)
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return timeout


__all__ = [
    "ClientClosed",
    "Correlator",
    "LinkState",
    "Pending",
    "RawReply",
    "RequestError",
    "Sink",
    "StreamItem",
    "StreamSink",
    "decode_payload",
    "new_routing_id",
]


#: What a :class:`StreamSink` hands on: ``("partial" | "final", body frames)`` or
#: ``("error", exception)``.
StreamItem = tuple[str, Any]

#: The queue a :class:`StreamSink` fills; the client that made the sink reads it back.
QueueT = TypeVar("QueueT")


class StreamSink(Generic[QueueT]):
    """Sink of one streamed request: hands ("partial"|"final"|"error", value) to ``put``.

    The blocking client passes a ``queue.SimpleQueue``'s ``put`` and the asyncio client an
    ``asyncio.Queue``'s ``put_nowait``: the correlation core never knows which. The sink
    keeps the queue, typed as given, for the reading side.
    """

    __slots__ = ("_put", "queue")

    def __init__(self, queue: QueueT, put: Callable[[StreamItem], None]) -> None:
        self.queue = queue
        self._put = put

    def on_partial(self, body: list[bytes]) -> None:
        self._put(("partial", body))

    def on_final(self, body: list[bytes]) -> None:
        self._put(("final", body))

    def on_error(self, error: BaseException) -> None:
        self._put(("error", error))
