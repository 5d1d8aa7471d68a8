"""asyncio Majordomo client: many requests in flight on one connection to the broker.

The same design as :mod:`protocol.client`, with the event loop in place of the I/O thread:
a correlator matches replies to futures by request id, pending requests are resent after
a reconnection, and one timer for the earliest deadline enforces every request's
(``protocol._deadlines``). All of it runs on the loop that first used the client.

What carries the frames is a transport behind one seam (:mod:`protocol.bus_transport`):
the native ZMTP one written on asyncio (:mod:`protocol.zmtp_dealer`, ``tcp://``), or a
pyzmq DEALER socket driven from the loop (:mod:`protocol.zmq_transport`, any ZeroMQ
address). The transport only sends messages and reports arrivals and the link's state;
requests, deadlines and resends stay here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mole.protocol import mdp
from mole.protocol._deadlines import DeadlineHeap
from mole.protocol._pending import (
    DEFAULT_DEADLINE_GRACE_S,
    DEFAULT_MAX_REQUEST_BYTES,
    ClientClosed,
    Correlator,
    Pending,
    Sink,
    StreamItem,
    StreamSink,
    check_timeout,
    decode_payload,
    decode_reply,
    new_routing_id,
)
from mole.protocol._pending import (
    RawReply as RawReply,  # re-exported: what request() returns for a plain worker
)
from mole.protocol.bus_transport import BusTransport, choose_transport
from mole.protocol.curve import CurveKeys
from mole.protocol.envelope import pack
from mole.protocol.errors import Forbidden

if TYPE_CHECKING:
    import zmq
    import zmq.asyncio

log = logging.getLogger("mole.client")


class _FutureSink:
    """Sink of one awaited request: completes its future (on the loop's thread)."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[list[bytes]]) -> None:
        self.future = future

    def on_partial(self, body: list[bytes]) -> None:
        pass

    def on_final(self, body: list[bytes]) -> None:
        if not self.future.done():
            self.future.set_result(body)

    def on_error(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass(slots=True)
class _Attachment:
    """The loop the client is used on and what runs on it, set together once.

    Holding them in one optional attribute lets every callback see a fully started
    client or none at all.
    """

    loop: asyncio.AbstractEventLoop
    transport: BusTransport
    deadlines: DeadlineHeap


class _LinkEvents:
    """What the transport reports, applied to the client's correlator (the seam's other
    side): replies to their requests, link state, resends after a reconnection."""

    __slots__ = ("_core", "_resend", "_url", "frames_arrived")

    def __init__(self, core: Correlator, url: str, resend: Callable[[], None]) -> None:
        self._core = core
        self._url = url
        self._resend = resend
        self.frames_arrived = core.dispatch  # called per reply: no hop in between

    def connected(self) -> None:
        if self._core.link.up():
            self._resend()

    def disconnected(self, reason: str | None) -> None:
        if self._core.link.connected:
            log.info("lost the connection to the broker at %s", self._url)
        self._core.link.down(reason)

    def refused(self, reason: Exception) -> None:
        self._core.link.down(str(reason))
        failed = self._core.fail_all(lambda p: Forbidden(str(reason), request_id=p.request_id))
        log.error("%s (%d pending request(s) failed)", reason, failed)


class AsyncClient:
    """An asyncio Majordomo client. Use it from one event loop; share it among tasks.

    Arguments are those of :class:`protocol.client.Client`, and ``transport``: what
    carries the frames, ``"native"`` (ZMTP on asyncio, ``tcp://`` only) or ``"zmq"``
    (a pyzmq socket, any ZeroMQ address); None reads ``MOLE_BUS_TRANSPORT``, else takes
    the default where it can serve (:func:`protocol.bus_transport.choose_transport`).
    ``context`` is for the pyzmq transport: a plain ``zmq.Context`` (a
    ``zmq.asyncio.Context`` is accepted and shadowed).

    Life cycle: :meth:`start` connects on the running loop (a long-lived owner, such as a
    server process at start-up, calls it once and :meth:`close` at shut-down); ``async
    with`` does the same pair for a block; a first request starts an unstarted client
    by itself. The loop that starts it owns it from then on.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        context: zmq.Context[zmq.Socket[bytes]] | zmq.asyncio.Context | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 3.0,
        reconnect_interval: float = 0.1,
        reconnect_interval_max: float = 1.0,
        deadline_grace: float = DEFAULT_DEADLINE_GRACE_S,
        routing_id: bytes | None = None,
        curve: CurveKeys | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        transport: str | None = None,
    ) -> None:
        self.url = url
        self.timeout = check_timeout(timeout, 30.0)
        self.routing_id = routing_id or new_routing_id()
        self._core = Correlator(
            url, deadline_grace=deadline_grace, max_body_bytes=max_request_bytes
        )
        self._transport = _make_transport(
            choose_transport(transport, url, curve=curve is not None),
            url,
            self.routing_id,
            curve=curve,
            context=context,
            options=(
                heartbeat_interval,
                heartbeat_timeout,
                reconnect_interval,
                reconnect_interval_max,
            ),
            max_message_bytes=max(max_request_bytes, DEFAULT_MAX_REQUEST_BYTES) * 4,
        )
        self._io: _Attachment | None = None
        self._closed = False

    # ------------------------------------------------------------------ public API

    async def request(self, service: str, payload: Any, timeout: float | None = None) -> Any:
        """Send ``payload`` to ``service`` and return the decoded reply payload.

        Raises:
            RequestError: the subclass for the answer's error code (``DeadlineExceeded``
                also when the client's own deadline passes).
            ClientClosed: the client was closed meanwhile.
        """
        body = await self._call(service, [pack(payload)], timeout)
        return decode_reply(service, body)

    async def stream(
        self, service: str, payload: Any, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """Yield each PARTIAL reply payload, then the FINAL one; errors raise."""
        timeout = check_timeout(timeout, self.timeout)
        io = self._start()
        stream_queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        sink = StreamSink(stream_queue, stream_queue.put_nowait)
        pending = self._submit(io, service, [pack(payload)], timeout, sink)
        finished = False
        try:
            while True:
                try:
                    async with asyncio.timeout(max(0.0, pending.expires - time.monotonic())):
                        kind, value = await sink.queue.get()
                except TimeoutError:
                    if self._core.take(pending.request_id) is not None:
                        finished = True
                        raise self._core.deadline_error(pending) from None
                    continue
                if kind == "error":
                    finished = True
                    raise value
                if kind == "final":
                    finished = True
                    yield decode_payload(value)
                    return
                yield decode_payload(value)
        finally:
            if not finished:
                self._core.take(pending.request_id)

    async def service_available(self, name: str, timeout: float | None = None) -> bool:
        """Whether a live worker of ``name`` is registered (RFC 8 ``mmi.service``)."""
        body = await self._call(mdp.MMI_SERVICE, [name.encode("utf-8")], timeout)
        return decode_payload(body, raw=True) == b"200"

    async def status(self, timeout: float | None = None) -> dict[str, Any]:
        """The broker's ``mmi.status`` report."""
        report: dict[str, Any] = decode_payload(
            await self._call(mdp.MMI_STATUS, [pack({})], timeout)
        )
        return report

    @property
    def connected(self) -> bool:
        return self._core.link.connected

    @property
    def transport(self) -> str:
        """Which transport carries the frames: ``"native"`` or ``"zmq"``."""
        return self._transport.name

    @property
    def pending(self) -> int:
        return len(self._core)

    def stats(self) -> dict[str, Any]:
        """``{pending, resent, dropped_replies, connected, connects}`` for metrics."""
        return self._core.stats()

    async def start(self) -> None:
        """Connect now, on the running loop, which then owns the client.

        Starting early means the connection (and, with CURVE, its handshake) is under way
        before the first request, and a bad address fails here rather than in a request.
        Calling it again on the same loop does nothing.

        Raises:
            ClientClosed: the client was closed (a closed client cannot be restarted).
            RuntimeError: the client was started on another event loop.
        """
        self._start()

    async def close(self) -> None:
        """Close the socket; pending requests raise :class:`ClientClosed`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._core.fail_all(
            lambda p: ClientClosed(
                f"client closed while request {p.request_id} to {p.service!r} was pending"
            )
        )
        io = self._io
        if io is not None:
            io.deadlines.close()
            io.transport.close()

    async def __aenter__(self) -> AsyncClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    def _start(self) -> _Attachment:
        """The client's loop and sockets, made on the running loop at first use."""
        if self._closed:
            raise ClientClosed("the client is closed")
        if self._io is not None:
            if asyncio.get_running_loop() is not self._io.loop:
                raise RuntimeError(
                    "an AsyncClient belongs to the event loop that first used "
                    "it; create one client per loop"
                )
            return self._io
        loop = asyncio.get_running_loop()
        deadlines = DeadlineHeap(loop, self._expire, self._is_pending, self._core.__len__)
        self._transport.open(loop, _LinkEvents(self._core, self.url, self._resend_pending))
        self._io = io = _Attachment(loop, self._transport, deadlines)
        return io

    def _submit(
        self, io: _Attachment, service: str, body: list[bytes], timeout: float, sink: Sink
    ) -> Pending:
        pending = self._core.open(service, body, timeout, sink)
        self._send(io, self._core.frames(pending))
        return pending

    async def _call(self, service: str, body: list[bytes], timeout: float | None) -> list[bytes]:
        timeout = check_timeout(timeout, self.timeout)
        io = self._start()
        loop = io.loop
        future: asyncio.Future[list[bytes]] = loop.create_future()
        pending = self._submit(io, service, body, timeout, _FutureSink(future))
        io.deadlines.watch(pending, loop.time() + (pending.expires - time.monotonic()))
        try:
            return await future
        except asyncio.CancelledError:
            self._core.take(pending.request_id)  # forget it: a late answer is dropped
            raise

    def _is_pending(self, pending: Pending) -> bool:
        return self._core.get(pending.request_id) is pending

    def _expire(self, pending: Pending) -> None:
        if self._core.take(pending.request_id) is not None:
            pending.sink.on_error(self._core.deadline_error(pending))

    def _send(self, io: _Attachment, frames: list[bytes]) -> None:
        io.transport.send(frames)

    def _resend_pending(self) -> None:
        """After a reconnection: every pending request again, with the time it has left."""
        io = self._io
        if io is None:
            return
        resend = self._core.resend_frames()
        log.info(
            "reconnected to the broker at %s; resending %d pending request(s)",
            self.url,
            len(resend),
        )
        for frames in resend:
            io.transport.send(frames)


def _make_transport(
    name: str,
    url: str,
    routing_id: bytes,
    *,
    curve: CurveKeys | None,
    context: zmq.Context[zmq.Socket[bytes]] | zmq.asyncio.Context | None,
    options: tuple[float, float, float, float],
    max_message_bytes: int,
) -> BusTransport:
    interval, timeout, reconnect, reconnect_max = options
    if name == "native":
        from mole.protocol.zmtp_dealer import ZmtpDealer

        return ZmtpDealer(
            url,
            routing_id,
            curve=curve,
            heartbeat_interval=interval,
            heartbeat_timeout=timeout,
            reconnect_interval=reconnect,
            reconnect_interval_max=reconnect_max,
            max_message_bytes=max_message_bytes,
        )
    from mole.protocol.zmq_transport import ZmqTransport

    return ZmqTransport(
        url,
        routing_id,
        context=context,
        curve=curve,
        heartbeat_interval=interval,
        heartbeat_timeout=timeout,
        reconnect_interval=reconnect,
        reconnect_interval_max=reconnect_max,
    )
