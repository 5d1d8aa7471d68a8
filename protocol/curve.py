"""CURVE keys for the client side of a connection (clients and workers dialling the broker).

The broker may require CURVE encryption and authentication (docs/design.md). A peer that dials
it needs the broker's public key and its own key pair; ``mole keys generate`` writes them
in ``zmq.auth``'s certificate format, which :meth:`CurveKeys.from_files` reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

#: The broker's public ``.key`` file (written by ``mole keys generate broker``).
ENV_SERVER_KEY = "MOLE_CURVE_SERVER_KEY"
#: This peer's ``.key_secret`` file (``mole keys generate NAME``).
ENV_SECRET_KEY = "MOLE_CURVE_SECRET_KEY"


class CurveKeyError(ValueError):
    """A CURVE key file is missing, unreadable or lacks the key it should hold."""


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """Z85-encoded keys: the broker's public key, then this peer's public and secret."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(cls, server_public_file: str | Path, secret_file: str | Path) -> CurveKeys:
        """Load ``broker.key`` (public) and this peer's ``NAME.key_secret``."""
        import zmq.auth

        try:
            server_public, _ = zmq.auth.load_certificate(str(server_public_file))
            public, secret = zmq.auth.load_certificate(str(secret_file))
        except (OSError, ValueError) as err:
            raise CurveKeyError(f"cannot load CURVE keys: {err}") from err
        if secret is None:
            raise CurveKeyError(
                f"{secret_file} holds no secret key; pass the .key_secret file "
                "written by `mole keys generate`"
            )
        if server_public is None or public is None:
            raise CurveKeyError(f"{server_public_file} or {secret_file} holds no public key")
        return cls(server_public, public, secret)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CurveKeys | None:
        """Keys named by ``MOLE_CURVE_SERVER_KEY`` and ``MOLE_CURVE_SECRET_KEY``.

        Returns None when neither is set (CURVE off, the default for local use). Setting
        only one is a mistake that would otherwise show up as a peer that silently never
        gets an answer, so it raises.

        Raises:
            CurveKeyError: only one variable is set, or a file is missing or bad.
        """
        env = os.environ if env is None else env
        server = env.get(ENV_SERVER_KEY) or None
        secret = env.get(ENV_SECRET_KEY) or None
        if server is None and secret is None:
            return None
        if server is None or secret is None:
            missing = ENV_SERVER_KEY if server is None else ENV_SECRET_KEY
            raise CurveKeyError(
                f"{missing} is not set: CURVE needs both {ENV_SERVER_KEY} (the "
                f"broker's public .key file) and {ENV_SECRET_KEY} (this peer's "
                ".key_secret file), or neither"
            )
        return cls.from_files(server, secret)

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` a CURVE client of the broker (call before connect)."""
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret
