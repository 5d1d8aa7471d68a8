"""What the frontend rate-limits, and the 429 it answers.

* login (``POST /api/v1/auth/token`` and ``POST /api/v1/auth/register``): per username
  and per client address. Every attempt spends 1; a failed login spends
  ``login_failure_cost`` in all (default 5), so guessing passwords locks a username (and
  an address spraying many usernames) out much sooner than logging in does.
* classify (``/classify`` spends 1, ``/classify/batch`` spends its number of items): per
  authenticated user and per client address.
* register (``POST /api/v1/auth/register``): per client address, on top of the login
  limits, so one address cannot fill the user table.

Usernames are keyed case-folded, as the user store compares them: nobody locks ``alice``
out by failing logins as ``ALICE``, and nobody gets ten more guesses that way either.

The checks are coroutines. A check that SQLite must answer runs in a thread (it may
wait on another process's transaction); a classify check answered from this process's
lease (``RateLimiter.hit_from_lease``) stays on the loop.

The address is the TCP peer (``REMOTE_ADDR``); behind a reverse proxy every client shares
the proxy's address, so raise or switch off the per-address limits there.
Refusals are ``429 rate_limited`` with ``Retry-After`` in whole seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import falcon.asgi

from mole.frontend.errors import APIError
from mole.frontend.ratelimit import Decision, Rate, RateLimiter, parse_rate
from mole.frontend.settings import Settings

_KEY_CHARS = 128  # usernames are at most 50 characters; longer input is cut for the key


def client_address(req: falcon.asgi.Request) -> str:
    return req.remote_addr or "unknown"


class Limits:
    """The frontend's limits over one :class:`RateLimiter` (None: nothing is limited)."""

    def __init__(
        self,
        limiter: RateLimiter | None,
        *,
        login_user: Rate | None = None,
        login_address: Rate | None = None,
        classify_user: Rate | None = None,
        classify_address: Rate | None = None,
        register_address: Rate | None = None,
        login_failure_cost: int = 5,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.limiter = limiter
        self.on_refused = on_refused  # called with the refusing limit's name (metrics)
        self.login_user = login_user
        self.login_address = login_address
        self.classify_user = classify_user
        self.classify_address = classify_address
        self.register_address = register_address
        # (username, address) -> the classify checks, built once per client
        self._classify_checks: dict[tuple[str, str], tuple[tuple[str, Rate], ...]] = {}
        # one SQLite refill at a time per client and loop; the others wait for it
        self._refills: dict[tuple[object, ...], asyncio.Lock] = {}
        self.login_failure_cost = max(1, int(login_failure_cost))

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.time) -> Limits:
        rates = {
            name: parse_rate(getattr(settings, f"rate_limit_{name}"), name)
            for name in (
                "login_user",
                "login_address",
                "classify_user",
                "classify_address",
                "register_address",
            )
        }
        limiter = RateLimiter(settings.ratelimit_db, clock=clock) if any(rates.values()) else None
        return cls(
            limiter,
            login_user=rates["login_user"],
            login_address=rates["login_address"],
            classify_user=rates["classify_user"],
            classify_address=rates["classify_address"],
            register_address=rates["register_address"],
            login_failure_cost=settings.login_failure_cost,
        )

    @classmethod
    def disabled(cls) -> Limits:
        return cls(None)

    def _login_keys(self, username: str, address: str) -> list[tuple[str, Rate | None]]:
        return [
            (f"login:user:{username_key(username)}", self.login_user),
            (f"login:addr:{address}", self.login_address),
        ]

    async def login(self, username: str, address: str) -> None:
        """Spend one login attempt.

        Raises:
            APIError: rate_limited (429, Retry-After).
        """
        if self.limiter is not None:
            decision = await asyncio.to_thread(
                self.limiter.hit, self._login_keys(username, address)
            )
            self._check(
                decision, "login", "login attempts", "a failed login counts as several attempts"
            )

    async def login_failed(self, username: str, address: str) -> None:
        """The attempt failed: spend the rest of the failure cost."""
        if self.limiter is not None and self.login_failure_cost > 1:
            await asyncio.to_thread(
                self.limiter.charge,
                self._login_keys(username, address),
                self.login_failure_cost - 1,
            )

    async def register(self, address: str) -> None:
        """Spend one registration of this address.

        Raises:
            APIError: rate_limited (429, Retry-After).
        """
        if self.limiter is not None and self.register_address is not None:
            checks = [(f"register:addr:{address}", self.register_address)]
            decision = await asyncio.to_thread(self.limiter.hit, checks)
            self._check(decision, "register", "registrations", "ask an administrator for more")

    def _checks_for(self, username: str, address: str) -> tuple[tuple[str, Rate], ...]:
        key = (username, address)
        checks = self._classify_checks.get(key)
        if checks is None:
            if len(self._classify_checks) >= 10_000:
                self._classify_checks.clear()
            candidates = (
                (f"classify:user:{username}", self.classify_user),
                (f"classify:addr:{address}", self.classify_address),
            )
            checks = tuple((name, rate) for name, rate in candidates if rate is not None)
            self._classify_checks[key] = checks
        return checks

    async def classify(self, username: str, address: str, cost: int = 1) -> None:
        """Spend ``cost`` classifications (a batch's number of items).

        Raises:
            APIError: rate_limited (429, Retry-After).
        """
        if self.limiter is not None:
            checks = self._checks_for(username, address)
            decision = self.limiter.hit_from_lease(checks, cost)
            if decision is None:
                decision = await self._refill(checks, cost)
            self._check(decision, "classify", "classifications", "a batch counts each of its items")

    async def _refill(self, checks: tuple[tuple[str, Rate], ...], cost: int) -> Decision:
        """``hit`` in a thread, one at a time per client: when a lease runs out under
        load, every request in flight finds it empty at once, and without this each took
        a thread and a SQLite transaction of its own (measured: about 40 us a request at
        8 connections); now one refills and the others are answered from its lease."""
        assert self.limiter is not None
        key = (asyncio.get_running_loop(), checks)
        lock = self._refills.get(key)
        if lock is None:
            if len(self._refills) >= 10_000:
                self._refills.clear()
            lock = self._refills[key] = asyncio.Lock()
        async with lock:
            decision = self.limiter.hit_from_lease(checks, cost)  # refilled meanwhile?
            if decision is None:
                decision = await asyncio.to_thread(self.limiter.hit, checks, cost)
            return decision

    def close(self) -> None:
        if self.limiter is not None:
            self.limiter.close()

    def _check(self, decision: Decision, kind: str, what: str, note: str) -> None:
        if decision.allowed:
            return
        scope = "address" if ":addr:" in (decision.key or "") else "user"
        if self.on_refused is not None:
            self.on_refused(f"{kind}_{scope}")
        _raise(decision, scope, what, note)


def username_key(username: str) -> str:
    """A username as rate limits key it: case-folded like the user store compares it."""
    return username.strip().lower()[:_KEY_CHARS]


def _raise(decision: Decision, scope: str, what: str, note: str) -> None:
    rate = decision.rate
    limit = f"{rate.count} per {rate.period_s:g} s" if rate else "the limit"
    wait = decision.retry_after_header
    raise APIError(
        "rate_limited",
        f"too many {what} for this {scope} ({limit}; {note}); retry in {wait} s",
        headers={"Retry-After": wait},
    )
