"""One error vocabulary for the HTTP API, and the ONE table from error codes to statuses.

Every error response has the same shape, whatever raised it (a resource, the bus, gating,
Falcon's router)::

    {"error": "<code>", "detail": "<what happened and what to do>", "request_id": "...",
     "field": "<the field at fault>"}          # field only for 400/422 about one field

Batch items that fail carry the same fields (``error``, ``detail``, ``field``,
``request_id``) beside their ``index`` and ``ok``. Errors the HTTP server refuses before
the app sees a request (a head too large or too slow, the connection cap) are written in
the same shape by ``frontend.server`` and ``frontend.guard``; only a request line the
parser cannot read at all is answered by uvicorn itself, as plain text (400, then the
connection is closed). NOTE: uvicorn catches httptools' ``HttpParserError`` inside its own
``data_received`` and writes that answer through a method its documentation does not
name; neither uvicorn's settings nor httptools' documented interface (the parser, its
callbacks and exceptions) offers a way to choose the body, so it is left as it is rather
than patched (checked for uvicorn 0.55 and httptools 0.9).
The handlers that turn exceptions into responses are in ``frontend.error_handlers``.

Codes come from three places: ``protocol.errors.ErrorCode`` (the bus), gating's error
codes (``gating.errors.GatingError.code``), and the frontend's own (auth, validation).
:data:`STATUS_BY_CODE` maps all of them; nothing else in ``frontend`` picks a status for
an error code.
"""

from __future__ import annotations

from typing import Any

from mole.protocol.errors import RequestError

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
    "unknown_worker": 404,  # a management service named no registered worker
    "internal": 502,  # a bug upstream (broker or worker), not in the frontend
    # gating.errors.GatingError codes
    "unsupported_language": 422,
    "language_uncertain": 422,
    "unknown_domain": 422,
    "domain_without_tasks": 422,
    "unknown_task": 422,
    "task_not_served": 422,  # no served task matches the description (gating refused it)
    "unknown_expert": 422,
    "gating_error": 422,
    "gating_artifact": 503,  # a gating model file is missing: the operator must act
    # the frontend's own
    "invalid_body": 400,
    "validation_error": 422,
    "unsupported_media_type": 415,
    "payload_too_large": 413,
    "body_timeout": 408,  # the body did not arrive in time (frontend.media)
    "header_timeout": 408,  # the request head did not arrive in time (frontend.server)
    "headers_too_large": 431,  # the request head is over the limit (frontend.server)
    "too_many_connections": 503,  # the process's connection cap (frontend.guard)
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
    "too_many_connections": 1,
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
        """The documented error shape: ``{error, detail, request_id[, field]}``."""
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


def from_gating_error(err: Exception, given: frozenset[str] = frozenset()) -> APIError:
    """The HTTP error for a gating failure; it keeps gating's code and its facts (served...).

    ``given`` names the request fields the caller set to skip a gating step (``task``,
    ``language``): an error about such a step names that field, not the text it would
    otherwise have been detected from.
    """
    code = str(getattr(err, "code", None) or "gating_error")
    extra: dict[str, Any] = {}
    to_dict = getattr(err, "to_dict", None)
    if callable(to_dict):
        extra = {
            k: v
            for k, v in to_dict().items()
            if k not in ("error", "message", "detail", "request_id", "field")
        }
    if "language" in code and "language" in given:
        field = "language"
    elif code == "unknown_task" and "task" in given:
        field = "task"
    elif "language" in code:
        field = "text"
    elif code == "bad_request":
        field = "description" if "description" in str(err) else "text"
    else:
        field = "description"
    detail = getattr(err, "message", None) or str(err)
    return APIError(code, detail, field=field, extra=extra, status=STATUS_BY_CODE.get(code, 422))


def status_line(code: str) -> str:
    """``"408 Request Timeout"`` for an error code (for answers written below Falcon)."""
    from http import HTTPStatus

    status = STATUS_BY_CODE.get(code, 500)
    return f"{status} {HTTPStatus(status).phrase}"


def error_json(code: str, detail: str, request_id: str | None = None) -> bytes:
    """The error document as JSON bytes, for answers written below Falcon."""
    import orjson

    return orjson.dumps(APIError(code, detail).body(request_id))
