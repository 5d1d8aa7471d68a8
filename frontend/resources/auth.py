"""POST /api/v1/auth/register and POST /api/v1/auth/token (OAuth2 password form).

argon2 costs tens to hundreds of milliseconds a hash, on purpose, and user writes may
wait on SQLite, so both run in a thread; the event loop goes on serving meanwhile.
"""

from __future__ import annotations

import asyncio

import falcon.asgi

from mole.frontend.errors import APIError
from mole.frontend.limits import Limits, client_address
from mole.frontend.media import parse_body, parse_form, respond
from mole.frontend.tokens import TokenService
from mole.frontend.users import UserError, UserStore, check_password, check_username


class Register:
    auth = "public"

    def __init__(
        self,
        users: UserStore,
        *,
        enabled: bool,
        max_body: int,
        body_timeout_s: float,
        limits: Limits | None = None,
    ) -> None:
        self._users = users
        self._enabled = enabled
        self._max_body = max_body
        self._body_timeout = body_timeout_s
        self._limits = limits or Limits.disabled()

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if not self._enabled:
            raise APIError(
                "registration_disabled",
                "registration is switched off on this "
                "server (MOLE_ALLOW_REGISTRATION=false); ask an administrator",
            )
        body = await parse_body(req, self._max_body, self._body_timeout)
        if not isinstance(body, dict):
            raise APIError(
                "validation_error",
                "body: must be an object with username and password",
                field="body",
            )
        username = body.get("username")
        address = client_address(req)
        await self._limits.login(username if isinstance(username, str) else "", address)
        await self._limits.register(address)
        try:
            # validated here too so the store is handed strings (it checks them again)
            new_username = check_username(body.get("username"))
            new_password = check_password(body.get("password"))
            user = await asyncio.to_thread(self._users.create, new_username, new_password)
        except UserError as err:
            raise APIError(err.code, str(err), field=err.field) from None
        respond(req, resp, {"username": user.username, "disabled": False}, 201)


class Token:
    auth = "public"

    def __init__(
        self,
        users: UserStore,
        tokens: TokenService,
        *,
        max_body: int,
        body_timeout_s: float,
        limits: Limits | None = None,
    ) -> None:
        self._users = users
        self._tokens = tokens
        self._max_body = max_body
        self._body_timeout = body_timeout_s
        self._limits = limits or Limits.disabled()

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        form = await parse_form(req, self._max_body, self._body_timeout)
        grant = form.get("grant_type")
        if grant not in (None, "", "password"):
            raise APIError(
                "validation_error", "grant_type: only 'password' is supported", field="grant_type"
            )
        for name in ("username", "password"):
            if not form.get(name):
                raise APIError("validation_error", f"{name}: is required", field=name)
        address = client_address(req)
        await self._limits.login(form["username"], address)
        user = await asyncio.to_thread(self._users.authenticate, form["username"], form["password"])
        if user is None:
            await self._limits.login_failed(form["username"], address)
            raise APIError("invalid_credentials", "incorrect username or password")
        resp.set_header("Cache-Control", "no-store")
        respond(
            req,
            resp,
            {
                "access_token": self._tokens.issue(user.username),
                "token_type": "bearer",
                "expires_in": self._tokens.ttl_seconds,
            },
        )
