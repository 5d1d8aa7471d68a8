"""The ASGI layer around the Falcon app: process start-up and shut-down, and the
connection cap.

* Lifespan: on ``startup`` the serving process connects its bus client on its own event
  loop (after gunicorn forked it; nothing of the kind exists in the master); on
  ``shutdown``, once uvicorn has finished the requests in flight, it closes the client
  and flushes and closes its stores. Falcon's app is given only HTTP scopes, so tests can
  call it directly without a lifespan per request.
* Connection cap: the HTTP protocol (``frontend.server``) counts this process's open
  connections in a :class:`ConnectionGauge`; a request arriving while more than
  ``max_connections`` are open is answered ``503 too_many_connections`` in the
  documented error shape, with ``Connection: close`` so the connection goes at once.
  uvicorn's own ``limit_concurrency`` answers in plain text, hence this.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mole.frontend.errors import RETRY_AFTER_BY_CODE, STATUS_BY_CODE, error_json

log = logging.getLogger("mole.frontend")

# The ASGI callables as falcon.asgi.App declares them, so a Falcon app is an ASGIApp.
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


class ConnectionGauge:
    """Open HTTP connections of this process (one event loop: no lock needed)."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = 0


#: The gauge the serving process's HTTP protocol updates (see ``frontend.server``).
PROCESS_CONNECTIONS = ConnectionGauge()


class ServerGuard:
    """ASGI app: lifespan hooks and the connection cap, in front of ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_connections: int,
        gauge: ConnectionGauge = PROCESS_CONNECTIONS,
        on_startup: Hook | None = None,
        on_shutdown: Hook | None = None,
    ) -> None:
        self._app = app
        self._max = max_connections
        self._gauge = gauge
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self._gauge.open > self._max:
                await self._refuse(send)
                return
            await self._app(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websocket: not served
            await self._app(scope, receive, send)

    async def _refuse(self, send: Send) -> None:
        code = "too_many_connections"
        body = error_json(
            code,
            f"this server process has more than {self._max} open connections "
            "(MOLE_MAX_CONNECTIONS); retry shortly or reuse a kept-alive connection",
        )
        await send(
            {
                "type": "http.response.start",
                "status": STATUS_BY_CODE[code],
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(RETRY_AFTER_BY_CODE[code]).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self._on_startup is not None:
                        await self._on_startup()
                except Exception as err:
                    log.exception("frontend start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if self._on_shutdown is not None:
                        await self._on_shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return
