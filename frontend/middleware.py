"""Cross-cutting request handling: request ids, body limits, authentication, metrics.

Each resource class declares who may call it with an ``auth`` attribute: ``"public"``,
``"user"`` (a valid bearer token of an enabled user; the default) or ``"admin"``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import falcon

from mole.frontend.errors import APIError
from mole.frontend.metrics import Metrics
from mole.frontend.tokens import TokenError, TokenService
from mole.frontend.users import User, UserStore

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestContext:
    """Gives every request an id (echoed as ``X-Request-ID``) and bounds its body size."""

    def __init__(
        self, new_id: Callable[[], str], max_body_bytes: int, metrics: Metrics | None = None
    ) -> None:
        self._new_id = new_id
        self._max_body = max_body_bytes
        self._metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.request_id = self._new_id()
        req.context.started = time.perf_counter()
        resp.set_header("X-Request-ID", req.context.request_id)
        length = req.content_length
        if length is not None and length > self._max_body:
            raise APIError(
                "payload_too_large",
                f"request body is {length} bytes; the limit is {self._max_body}",
            )

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool
    ) -> None:
        request_id = getattr(req.context, "request_id", None)
        if request_id:
            resp.set_header("X-Request-ID", request_id)
        if self._metrics is not None:
            route = req.uri_template or "unmatched"
            status = (
                resp.status_code
                if hasattr(resp, "status_code")
                else int(str(resp.status).split()[0])
            )
            m = self._metrics
            method = req.method if req.method in _METHODS else "OTHER"  # bounded labels
            m.child(m.http_requests, method, route, str(status)).inc()
            started = getattr(req.context, "started", None)
            if started is not None:
                m.child(m.http_latency, route).observe(time.perf_counter() - started)


class Authenticator:
    """Checks bearer tokens and roles before a resource runs.

    Users are looked up in the store (so a disabled or deleted user loses access), through
    a cache of a few seconds so the hot path does not hit SQLite on every request.
    """

    def __init__(
        self,
        tokens: TokenService,
        users: UserStore,
        *,
        cache_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tokens = tokens
        self._users = users
        self._ttl = cache_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, User | None]] = {}
        self._lock = threading.Lock()

    def _user(self, username: str) -> User | None:
        now = self._clock()
        hit = self._cache.get(username)
        if hit is not None and hit[0] > now:
            return hit[1]
        user = self._users.get(username)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[username] = (now + self._ttl, user)
        return user

    def authenticate(self, req: falcon.Request) -> User:
        header = req.get_header("Authorization")
        if not header:
            raise APIError(
                "not_authenticated", "missing bearer token; get one at POST /api/v1/auth/token"
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError("not_authenticated", "Authorization must be 'Bearer <token>'")
        try:
            username = self._tokens.verify(token.strip())
        except TokenError as err:
            raise APIError("invalid_token", str(err)) from None
        user = self._user(username)
        if user is None or user.disabled:
            raise APIError("invalid_token", "the token's user does not exist or is disabled")
        return user

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource, params
    ) -> None:
        if resource is None:
            return
        level = getattr(resource, "auth", "user")
        if level == "public" or not hasattr(resource, f"on_{req.method.lower()}"):
            return  # public, or Falcon answers 405 / OPTIONS itself
        user = self.authenticate(req)
        req.context.user = user
        if level == "admin" and not user.is_admin:
            raise APIError(
                "forbidden",
                "this endpoint needs an admin user (granted by `mole users create --admin`)",
            )
