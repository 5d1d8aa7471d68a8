"""Cross-cutting request handling: request ids, body limits, authentication, metrics.

Each resource class declares who may call it with an ``auth`` attribute: ``"public"``,
``"user"`` (a valid bearer token of an enabled user; the default) or ``"admin"``.
Every hook here is a coroutine of Falcon's ASGI app; none of them blocks the loop (a
user lookup that misses the cache runs in a thread, since SQLite may wait on a writer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import falcon.asgi

from mole.frontend.errors import APIError
from mole.frontend.metrics import Metrics
from mole.frontend.tokens import TokenError, TokenService
from mole.frontend.users import User, UserStore

access_log = logging.getLogger("mole.frontend.access")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestContext:
    """Gives every request an id (echoed as ``X-Request-ID``), bounds its body size,
    counts it in the metrics and, when asked, writes its access-log line.

    The access log has the peer, method, path WITHOUT the query string, status, body
    size, seconds and request id: never a body, a query or a header (Authorization
    carries the bearer token, a query may carry anything).
    """

    def __init__(
        self,
        new_id: Callable[[], str],
        max_body_bytes: int,
        metrics: Metrics | None = None,
        *,
        log_access: bool = False,
    ) -> None:
        self._new_id = new_id
        self._max_body = max_body_bytes
        self._metrics = metrics
        self._log_access = log_access

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.request_id = self._new_id()  # echoed in process_response
        req.context.started = time.perf_counter()
        length = req.content_length
        if length is not None and length > self._max_body:
            raise APIError(
                "payload_too_large",
                f"request body is {length} bytes; the limit is {self._max_body}",
            )

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        request_id = getattr(req.context, "request_id", None)
        if request_id:
            resp.set_header("X-Request-ID", request_id)
        started = getattr(req.context, "started", None)
        elapsed = None if started is None else time.perf_counter() - started
        if self._metrics is not None:
            route = req.uri_template or "unmatched"
            method = req.method if req.method in _METHODS else "OTHER"  # bounded labels
            self._metrics.http_request(method, route, resp.status_code, elapsed)
        if self._log_access:
            data = resp.data
            access_log.info(
                '%s "%s %s HTTP/%s" %d %d %.6f %s',
                req.remote_addr,
                req.method,
                req.path,
                req.scope.get("http_version", "1.1"),
                resp.status_code,
                len(data) if data else 0,
                elapsed or 0.0,
                request_id,
            )


class Authenticator:
    """Checks bearer tokens and roles before a resource runs.

    Users are looked up in the store (so a disabled or deleted user loses access), through
    a cache of a few seconds so the hot path does not reach SQLite on every request.
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

    async def _user(self, username: str) -> User | None:
        now = self._clock()
        hit = self._cache.get(username)
        if hit is not None and hit[0] > now:
            return hit[1]
        user = await asyncio.to_thread(self._users.get, username)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[username] = (now + self._ttl, user)
        return user

    async def authenticate(self, req: falcon.asgi.Request) -> User:
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
        user = await self._user(username)
        if user is None or user.disabled:
            raise APIError("invalid_token", "the token's user does not exist or is disabled")
        return user

    async def process_resource(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        params: dict[str, Any],
    ) -> None:
        if resource is None:
            return
        level = getattr(resource, "auth", "user")
        if level == "public" or not hasattr(resource, f"on_{req.method.lower()}"):
            return  # public, or Falcon answers 405 / OPTIONS itself
        user = await self.authenticate(req)
        req.context.user = user
        if level == "admin" and not user.is_admin:
            raise APIError(
                "forbidden",
                "this endpoint needs an admin user (granted by `mole users create --admin`)",
            )
