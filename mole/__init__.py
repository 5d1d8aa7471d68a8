"""MoLE: multilingual text classification served by a mixture of language experts.

One import name for the whole project. The folders the project was specified with are
mapped under it by ``pyproject.toml`` (``mole.protocol`` is ``protocol/``, ``mole.broker``
is ``broker/``, and so on; see docs/design.md). The client library is re-exported here
because it is what most programs need::

    from mole import Client, AsyncClient

Importing ``mole`` costs what importing ``mole.protocol`` costs: pyzmq and msgpack, never
torch, transformers or falcon.
"""

from typing import TYPE_CHECKING, Any

from mole.protocol import (
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
)

if TYPE_CHECKING:  # imported on first use below; the type checker sees what they are
    from mole.protocol import AsyncClient, Client, ClientClosed

#: Names resolved on first use: the client classes pull in asyncio and the client
#: machinery, and the version lookup pulls in importlib.metadata. Every broker and worker
#: process imports ``mole`` first, so eager imports here would cost each of them ~0.2 s.
_LAZY_CLIENT_NAMES = frozenset({"AsyncClient", "Client", "ClientClosed"})


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mole-framework")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name in _LAZY_CLIENT_NAMES:
        import mole.protocol

        return getattr(mole.protocol, name)
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module 'mole' has no attribute {name!r}")


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
    "__version__",
]
