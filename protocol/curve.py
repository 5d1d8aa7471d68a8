"""CURVE keys for the client side of a connection (clients and workers dialling the broker).

The broker may require CURVE encryption and authentication (DESIGN.md). A peer that dials
it needs the broker's public key and its own key pair; ``mole keys generate`` writes them
in ``zmq.auth``'s certificate format, which :meth:`CurveKeys.from_files` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zmq


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
            raise CurveKeyError(f"{secret_file} holds no secret key; pass the .key_secret file "
                                "written by `mole keys generate`")
        return cls(server_public, public, secret)

    def apply(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE client of the broker (call before connect)."""
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret
