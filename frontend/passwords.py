"""Password hashing with argon2id (argon2-cffi), with a cost profile chosen by setting.

The default profile (RFC 9106 low-memory) costs a few hundred milliseconds a hash on a
small machine, which is the point; tests pick ``"cheap"`` so they stay fast.
"""

from __future__ import annotations

import argon2
from argon2 import profiles
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

PROFILES = {"default": profiles.RFC_9106_LOW_MEMORY, "cheap": profiles.CHEAPEST}


class PasswordHasher:
    """argon2id hashing and verification; safe to share between threads."""

    def __init__(self, profile: str = "default") -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown argon2 profile {profile!r}; known: {', '.join(PROFILES)}")
        self._hasher = argon2.PasswordHasher.from_parameters(PROFILES[profile])
        # A hash to verify against when the user does not exist, so a wrong username
        # costs as much time as a wrong password (no user enumeration by timing).
        self._dummy = self._hasher.hash("not-a-real-password")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash or self._dummy, password) and bool(stored_hash)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._hasher.check_needs_rehash(stored_hash)
