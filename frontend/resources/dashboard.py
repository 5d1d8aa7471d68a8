"""The fleet dashboard: the page (``/dashboard``, its script and style) and its data
(``GET /api/v1/admin/dashboard``, admin only).

The page itself is public and static — it holds no data and asks for an administrator's
login before it shows anything; every figure comes from the admin endpoint, which needs
an admin token like the rest of ``/api/v1/admin``. The page's files are package data of
``mole.frontend`` (``frontend/dashboard/``), read once at start-up: nothing is fetched
from a CDN, and the charts are drawn by the page's own script.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from importlib.resources import files
from typing import Any

import falcon
import falcon.asgi

from mole.frontend.analytics import Analytics
from mole.frontend.dispatch import Dispatcher
from mole.frontend.errors import from_request_error, validation
from mole.frontend.fleet import Window, fleet_view, routing_breakdown, time_series
from mole.frontend.media import respond
from mole.protocol.errors import RequestError

#: file name -> content type; nothing else is served from the page's folder
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
#: bounds of the chart window the data endpoint accepts (seconds)
SPAN_RANGE = (60.0, 6 * 3600.0)
MAX_POINTS = 720


def _load_assets() -> dict[str, bytes]:
    folder = files("mole.frontend").joinpath("dashboard")
    return {name: folder.joinpath(name).read_bytes() for name in ASSETS}


class Page:
    """``GET /dashboard`` and ``GET /dashboard/{asset}``."""

    auth = "public"

    def __init__(self) -> None:
        self._assets = _load_assets()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._send(resp, "index.html")

    async def on_get_asset(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, asset: str
    ) -> None:
        if asset not in ASSETS:
            raise falcon.HTTPNotFound(description=f"no dashboard file {asset!r}")
        self._send(resp, asset)

    def _send(self, resp: falcon.asgi.Response, name: str) -> None:
        resp.content_type = ASSETS[name]
        resp.data = self._assets[name]
        resp.cache_control = ["no-cache"]  # small files; a new release shows at once


def _window_from(req: falcon.asgi.Request, now: float) -> Window:
    span = req.get_param_as_float("span", default=600.0)
    bucket = req.get_param_as_float("bucket", default=10.0)
    if span is None or not SPAN_RANGE[0] <= span <= SPAN_RANGE[1]:
        raise validation("span", f"must be between {SPAN_RANGE[0]:g} and {SPAN_RANGE[1]:g} s")
    if bucket is None or bucket <= 0 or span / bucket > MAX_POINTS:
        raise validation("bucket", f"must be positive and give at most {MAX_POINTS} points")
    return Window(now=now, span_s=span, bucket_s=bucket)


class Data:
    """``GET /api/v1/admin/dashboard``: the fleet (the broker's status), chart series and
    the routing breakdown, in one answer the page polls."""

    auth = "admin"

    def __init__(
        self,
        dispatcher: Dispatcher,
        analytics: Analytics,
        *,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dispatcher = dispatcher
        self._analytics = analytics
        self._timeout = timeout
        self._clock = clock

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        now = self._clock()
        window = _window_from(req, now)
        fleet: dict[str, Any] | None = None
        fleet_error: dict[str, str] | None = None
        try:
            fleet = fleet_view(await self._dispatcher.status(self._timeout))
        except RequestError as err:
            # the charts still help while the broker is away: show them with the error
            api_error = from_request_error(err)
            fleet_error = {"error": api_error.code, "detail": api_error.detail}

        def query(db: sqlite3.Connection) -> dict[str, Any]:
            return {"series": time_series(db, window), "routing": routing_breakdown(db, window)}

        figures = await asyncio.to_thread(self._analytics.read, query)
        respond(
            req,
            resp,
            {"now": now, "fleet": fleet, "fleet_error": fleet_error, **figures},
        )
