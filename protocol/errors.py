"""Error codes of the bus and the exception types that carry them.

Every request gets exactly one final outcome: the worker's reply or an error with one of
the codes below and a message a person can act on. The broker and workers put the code in
the reply header; the client library raises the matching exception, so callers catch
causes (``DeadlineExceeded``) rather than parse strings. The frontend maps the same codes
to HTTP statuses in one table (``frontend.errors``).

Hierarchy (grouped by who gave up, as httpx groups by cause)::

    MoleError
    ├── MalformedMessage            frames that break RFC 18 (never sent as a reply)
    ├── TransportError              the connection below Majordomo failed (native transport)
    │   ├── ProtocolMismatch        the peer does not speak ZMTP 3, or broke its framing
    │   └── HandshakeRefused        the peer refused the security handshake
    └── RequestError                a request's final outcome was an error
        ├── BadRequest              bad_request
        ├── UnknownService          unknown_service
        ├── NoWorker                no_worker
        ├── Overloaded              overloaded
        ├── DeadlineExceeded        deadline_exceeded
        ├── WorkerLost              worker_lost
        ├── Forbidden               forbidden (a broker management service, wrong key)
        ├── UnknownWorker           unknown_worker (a management service named no worker)
        └── InternalError           internal
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNKNOWN_SERVICE = "unknown_service"
    NO_WORKER = "no_worker"
    OVERLOADED = "overloaded"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    WORKER_LOST = "worker_lost"
    FORBIDDEN = "forbidden"
    UNKNOWN_WORKER = "unknown_worker"
    INTERNAL = "internal"


class MoleError(Exception):
    """Base of every exception this project's protocol layer raises."""


class MalformedMessage(MoleError):
    """A multipart message that does not follow RFC 18 or our envelope."""


class TransportError(MoleError):
    """The ZeroMQ connection itself failed (``protocol.zmtp_*``, the native transport).

    Never a request's outcome: the connection is dropped and dialled again, and the text
    is kept so a request that then runs out of time says why the broker was unreachable.
    """


class ProtocolMismatch(TransportError):
    """The peer does not speak ZMTP 3 (wrong greeting), or broke ZMTP framing."""


class HandshakeRefused(TransportError):
    """The peer refused the handshake in words: a ZMTP ERROR command (a CURVE broker's
    authenticator refusing this client's key). A peer that just hangs up is a plain
    ``TransportError`` whose text says what to check."""


class RequestError(MoleError):
    """A request ended with an error reply; ``code`` says which."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, request_id: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


class BadRequest(RequestError):
    """The request itself is wrong (payload, fields, size); resending it will not help."""

    code = ErrorCode.BAD_REQUEST


class UnknownService(RequestError):
    """The service name is not one the broker or worker can serve."""

    code = ErrorCode.UNKNOWN_SERVICE


class NoWorker(RequestError):
    """No live worker of the service registered before the request's deadline."""

    code = ErrorCode.NO_WORKER


class Overloaded(RequestError):
    """The service's queue is full; retry later."""

    code = ErrorCode.OVERLOADED


class DeadlineExceeded(RequestError):
    """The request's deadline passed before a reply arrived."""

    code = ErrorCode.DEADLINE_EXCEEDED


class WorkerLost(RequestError):
    """The worker holding the request died and no retry was possible in time."""

    code = ErrorCode.WORKER_LOST


class Forbidden(RequestError):
    """The caller's CURVE key may not use this broker management service (``mmi.drain``)."""

    code = ErrorCode.FORBIDDEN


class UnknownWorker(RequestError):
    """A management service named a worker id the broker does not know."""

    code = ErrorCode.UNKNOWN_WORKER


class InternalError(RequestError):
    """A bug or an unexpected failure in the broker or worker."""

    code = ErrorCode.INTERNAL


_BY_CODE: dict[str, type[RequestError]] = {
    cls.code.value: cls
    for cls in (
        BadRequest,
        UnknownService,
        NoWorker,
        Overloaded,
        DeadlineExceeded,
        WorkerLost,
        Forbidden,
        UnknownWorker,
        InternalError,
    )
}


def error_for_code(
    code: str, message: str, *, request_id: str | None = None, details: Any = None
) -> RequestError:
    """The exception for an error code; an unknown code becomes ``InternalError``."""
    cls = _BY_CODE.get(code, InternalError)
    if cls is InternalError and code != ErrorCode.INTERNAL.value:
        message = f"[{code}] {message}"
    return cls(message, request_id=request_id, details=details)
