"""MoLE's wire format and client library.

Importing this package pulls in pyzmq and msgpack only (never torch, transformers or
falcon), so any program can talk to the bus cheaply. ``Client`` (blocking, thread-safe)
and ``AsyncClient`` (asyncio) are imported on first use, so the broker and workers, which
need only the framing, do not load the client machinery.
"""

from mole.protocol.errors import (
    BadRequest,
    DeadlineExceeded,
    ErrorCode,
    InternalError,
    MalformedMessage,
    MoleError,
    NoWorker,
    Overloaded,
    RequestError,
    UnknownService,
    WorkerLost,
    error_for_code,
)

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientClosed",
    "DeadlineExceeded",
    "ErrorCode",
    "InternalError",
    "MalformedMessage",
    "MoleError",
    "NoWorker",
    "Overloaded",
    "RequestError",
    "UnknownService",
    "WorkerLost",
    "error_for_code",
]


def __getattr__(name: str):
    if name == "Client":
        from mole.protocol.client import Client

        return Client
    if name == "AsyncClient":
        from mole.protocol.aio import AsyncClient

        return AsyncClient
    if name == "ClientClosed":
        from mole.protocol._pending import ClientClosed

        return ClientClosed
    raise AttributeError(f"module 'protocol' has no attribute {name!r}")
