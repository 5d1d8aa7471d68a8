"""JWT access tokens (PyJWT, HS256): issue, and verify with every claim checked.

Verification pins ``algorithms=["HS256"]`` (so ``alg: none`` and algorithm confusion are
refused) and requires ``exp``, ``iat``, ``sub`` and ``iss``, with ``iss`` equal to ours.

A client sends the same token on every request for its whole life, and PyJWT's decode is
a noticeable share of a request's CPU time, so a token whose signature and claims were
verified once is remembered (exactly that token string, bounded cache); its expiry is
still checked against the clock on every request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt

ALGORITHM = "HS256"


class TokenError(ValueError):
    """The bearer token is missing a claim, expired, forged or malformed."""


class TokenService:
    def __init__(
        self,
        secret: str,
        *,
        issuer: str = "mole",
        ttl_seconds: int = 1800,
        clock: Callable[[], float] = time.time,
        leeway_s: float = 5.0,
        cache_size: int = 4096,
    ) -> None:
        self._secret = secret
        self.issuer = issuer
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._leeway = leeway_s
        self._verified: dict[str, tuple[str, float]] = {}  # token -> (sub, exp)
        self._cache_size = cache_size

    def issue(self, username: str) -> str:
        now = int(self._clock())
        claims = {"sub": username, "iat": now, "exp": now + self.ttl_seconds, "iss": self.issuer}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> str:
        """The token's subject (username).

        Raises:
            TokenError: with a reason safe to show the client.
        """
        hit = self._verified.get(token)
        if hit is not None:
            if hit[1] + self._leeway < self._clock():
                self._verified.pop(token, None)
                raise TokenError("token has expired; get a new one at /api/v1/auth/token")
            return hit[0]
        return self._verify(token)

    def _verify(self, token: str) -> str:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                # exp and iat are checked below against the injected clock (tests freeze
                # time); PyJWT still requires them to be present.
                options={
                    "require": ["exp", "iat", "sub", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError as err:
            raise TokenError(f"invalid token: {err}") from None
        exp, iat = claims["exp"], claims["iat"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, iat)):
            raise TokenError("invalid token: exp and iat must be numbers")
        now = self._clock()
        if exp + self._leeway < now:
            raise TokenError("token has expired; get a new one at /api/v1/auth/token")
        if iat - self._leeway > now:
            raise TokenError("invalid token: issued in the future")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise TokenError("invalid token: sub must be a non-empty string")
        if len(self._verified) >= self._cache_size:
            self._verified.clear()  # NOTE: crude bound; a cold entry costs one decode
        self._verified[token] = (sub, float(exp))
        return sub
