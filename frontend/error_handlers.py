"""Falcon error handlers: every exception leaves as the one documented error shape.

The vocabulary and the status table are in ``frontend.errors``; these coroutines only
write an :class:`~frontend.errors.APIError` (or Falcon's own HTTP errors, or a bug) into
the response, in the representation the client asked for.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon
import falcon.asgi

from mole.frontend.errors import APIError
from mole.frontend.media import respond

log = logging.getLogger("mole.frontend")

#: Falcon's own HTTP errors (router, body parsing) -> our codes.
_CODE_BY_STATUS = {
    400: "invalid_body",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


def _request_id(req: falcon.asgi.Request) -> str | None:
    return getattr(req.context, "request_id", None)


def send(req: falcon.asgi.Request, resp: falcon.asgi.Response, err: APIError) -> None:
    respond(req, resp, err.body(_request_id(req)), err.status)
    for name, value in err.headers.items():
        resp.set_header(name, value)


async def handle_api_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: APIError, params: Any
) -> None:
    send(req, resp, ex)


async def handle_http_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: falcon.HTTPError, params: Any
) -> None:
    """Falcon's own errors (unknown route, wrong method, ...) in our shape."""
    status = ex.status_code
    code = _CODE_BY_STATUS.get(status, "internal_error" if status >= 500 else "invalid_body")
    detail = ex.description or ex.title or code
    if status == 404:
        detail = f"no route {req.path}"
    elif status == 405:
        allowed = dict(ex.headers or {}).get("Allow", "")
        detail = f"{req.method} is not allowed on {req.path}; allowed: {allowed}"
    send(req, resp, APIError(code, detail, headers=dict(ex.headers or {}), status=status))


async def handle_unexpected(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any
) -> None:
    """A bug: log it with the request id (never the request text), answer 500."""
    log.exception("unhandled error in %s %s (request %s)", req.method, req.path, _request_id(req))
    detail = f"internal error; see the server log for request {_request_id(req)}"
    send(req, resp, APIError("internal_error", detail))


def install(app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]) -> None:
    """Register the handlers so every error leaves in the one shape."""
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(APIError, handle_api_error)
