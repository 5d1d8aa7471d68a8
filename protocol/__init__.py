"""MoLE's wire format and client library.

Importing this package pulls in pyzmq and msgpack only (never torch, transformers or
falcon), so any program can talk to the bus cheaply.
"""

from protocol.errors import (
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
    "BadRequest",
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
