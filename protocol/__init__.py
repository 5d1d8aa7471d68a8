"""MoLE's wire format and client library.

Importing this package pulls in pyzmq and msgpack only (never torch, transformers or
falcon), so any program can talk to the bus cheaply. ``Client`` (blocking, thread-safe)
and ``AsyncClient`` (asyncio) are imported on first use, so the broker and workers, which
need only the framing, do not load the client machinery.
"""

from typing import TYPE_CHECKING

from mole.protocol.errors import (
    BadRequest,
    DeadlineExceeded,
    ErrorCode,
    Forbidden,
    InternalError,
    MalformedMessage,
    MoleError,
    NoWorker,
    Overloaded,
    RequestError,
    UnknownService,
    UnknownWorker,
    WorkerLost,
    error_for_code,
)

if TYPE_CHECKING:  # the type checker sees the lazily imported names as what they are
    from mole.protocol._pending import ClientClosed
    from mole.protocol.aio import AsyncClient
    from mole.protocol.client import Client

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientClosed",
    "DeadlineExceeded",
    "ErrorCode",
    "Forbidden",
    "InternalError",
    "MalformedMessage",
    "MoleError",
    "NoWorker",
    "Overloaded",
    "RequestError",
    "UnknownService",
    "UnknownWorker",
    "WorkerLost",
    "error_for_code",
]


def __getattr__(name: str) -> type:
    if name == "Client":
        from mole.protocol.client import Client

        return Client
    if name == "AsyncClient":
        from mole.protocol.aio import AsyncClient

        return AsyncClient
    if name == "ClientClosed":
        from mole.protocol._pending import ClientClosed

        return ClientClosed
    raise AttributeError(f"module 'mole.protocol' has no attribute {name!r}")
