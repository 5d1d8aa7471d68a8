"""One error vocabulary for the HTTP API, and the ONE table from error codes to statuses.

Every error response has the same shape, whatever raised it (a resource, the bus, gating,
Falcon's router)::

    {"error": "<code>", "detail": "<what happened and what to do>", "request_id": "...",
     "field": "<the field at fault>"}          # field only for 400/422 about one field

Codes come from three places: ``protocol.errors.ErrorCode`` (the bus), gating's error
codes (``gating.errors.GatingError.code``), and the frontend's own (auth, validation).
:data:`STATUS_BY_CODE` maps all of them; nothing else in ``frontend`` picks a status for
an error code.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon

from mole.frontend.media import respond
from mole.protocol.errors import RequestError

log = logging.getLogger("mole.frontend")

#: error code -> HTTP status. The single place that decides.
STATUS_BY_CODE: dict[str, int] = {
    # protocol.errors.ErrorCode (the bus)
    "bad_request": 422,  # the worker refused the payload (a field it cannot serve)
    "unknown_service": 503,  # no worker of that base model is known to the broker
    "no_worker": 503,
    "overloaded": 429,
    "rate_limited": 429,  # frontend.limits: per user / per address limits
    "deadline_exceeded": 504,
    "worker_lost": 502,
    "internal": 502,  # a bug upstream (broker or worker), not in the frontend
    # gating.errors.GatingError codes
    "unsupported_language": 422,
    "language_uncertain": 422,
    "unknown_domain": 422,
    "domain_without_tasks": 422,
    "unknown_task": 422,
    "unknown_expert": 422,
    "gating_error": 422,
    "gating_artifact": 503,  # a gating model file is missing: the operator must act
    # the frontend's own
    "invalid_body": 400,
    "validation_error": 422,
    "unsupported_media_type": 415,
    "payload_too_large": 413,
    "not_authenticated": 401,
    "invalid_token": 401,
    "invalid_credentials": 401,
    "forbidden": 403,
    "registration_disabled": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "username_taken": 409,
    "invalid_registry": 422,
    "not_ready": 503,
    "internal_error": 500,
}

#: Seconds a client should wait before retrying, for the codes where retrying helps.
RETRY_AFTER_BY_CODE: dict[str, int] = {
    "no_worker": 5,
    "unknown_service": 5,
    "overloaded": 1,
    "not_ready": 5,
}

#: Falcon's own HTTP errors (router, body parsing) -> our codes.
_CODE_BY_STATUS = {
    400: "invalid_body",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


class APIError(Exception):
    """An error answered to the HTTP client; the status comes from :data:`STATUS_BY_CODE`."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field
        self.status = status or STATUS_BY_CODE.get(code, 500)
        self.headers = dict(headers or {})
        if code in RETRY_AFTER_BY_CODE:
            self.headers.setdefault("Retry-After", str(RETRY_AFTER_BY_CODE[code]))
        if self.status == 401:
            self.headers.setdefault("WWW-Authenticate", "Bearer")
        self.extra = extra or {}

    def body(self, request_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail, "request_id": request_id}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.extra)
        return body


def validation(field: str, detail: str) -> APIError:
    """A 422 about one field of the request body."""
    return APIError("validation_error", f"{field}: {detail}", field=field)


def from_request_error(err: RequestError) -> APIError:
    """The HTTP error for a bus error (``protocol.errors``)."""
    code = err.code.value
    detail = {
        "no_worker": "no worker serves this model right now; retry later",
        "unknown_service": "no worker serves this model right now; retry later",
        "overloaded": "the model's queue is full; retry later",
        "deadline_exceeded": "the request did not finish within REQUEST_TIMEOUT_SECONDS",
        "worker_lost": "the worker serving the request was lost",
    }.get(code)
    message = f"{detail} ({err.message})" if detail else err.message
    return APIError(code, message)


def from_gating_error(err: Exception) -> APIError:
    """The HTTP error for a gating failure; it keeps gating's code and its facts (served...)."""
    code = str(getattr(err, "code", None) or "gating_error")
    extra: dict[str, Any] = {}
    to_dict = getattr(err, "to_dict", None)
    if callable(to_dict):
        extra = {
            k: v
            for k, v in to_dict().items()
            if k not in ("error", "message", "detail", "request_id", "field")
        }
    if "language" in code:
        field = "text"
    elif code == "bad_request":
        field = "description" if "description" in str(err) else "text"
    else:
        field = "description"
    detail = getattr(err, "message", None) or str(err)
    return APIError(code, detail, field=field, extra=extra, status=STATUS_BY_CODE.get(code, 422))


def _request_id(req: falcon.Request) -> str | None:
    return getattr(req.context, "request_id", None)


def _send(req: falcon.Request, resp: falcon.Response, err: APIError) -> None:
    respond(req, resp, err.body(_request_id(req)), err.status)
    for name, value in err.headers.items():
        resp.set_header(name, value)


def handle_api_error(req, resp, ex: APIError, params) -> None:
    _send(req, resp, ex)


def handle_http_error(req, resp, ex: falcon.HTTPError, params) -> None:
    """Falcon's own errors (unknown route, wrong method, ...) in our shape."""
    status = ex.status_code
    code = _CODE_BY_STATUS.get(status, "internal_error" if status >= 500 else "invalid_body")
    detail = ex.description or ex.title or code
    if status == 404:
        detail = f"no route {req.path}"
    elif status == 405:
        allowed = (ex.headers or {}).get("Allow", "")
        detail = f"{req.method} is not allowed on {req.path}; allowed: {allowed}"
    err = APIError(code, detail, headers=dict(ex.headers or {}), status=status)
    _send(req, resp, err)


def handle_unexpected(req, resp, ex: Exception, params) -> None:
    """A bug: log it with the request id (never the request text), answer 500."""
    log.exception("unhandled error in %s %s (request %s)", req.method, req.path, _request_id(req))
    _send(
        req,
        resp,
        APIError(
            "internal_error", f"internal error; see the server log for request {_request_id(req)}"
        ),
    )


def install(app: falcon.App) -> None:
    """Register the handlers so every error leaves in the one shape."""
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(APIError, handle_api_error)
