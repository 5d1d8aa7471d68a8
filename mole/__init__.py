"""MoLE: multilingual text classification served by a mixture of language experts.

One import name for the whole project. The folders the project was specified with are
mapped under it by ``pyproject.toml`` (``mole.protocol`` is ``protocol/``, ``mole.broker``
is ``broker/``, and so on; see docs/design.md). The client library is re-exported here
because it is what most programs need::

    from mole import Client, AsyncClient

Importing ``mole`` costs what importing ``mole.protocol`` costs: pyzmq and msgpack, never
torch, transformers or falcon.
"""

from importlib.metadata import PackageNotFoundError, version

from mole.protocol import (
    AsyncClient,
    BadRequest,
    Client,
    ClientClosed,
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
)

try:
    __version__ = version("mole-framework")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

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
    "__version__",
]
