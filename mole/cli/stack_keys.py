"""CURVE keys for the bus of a ``mole up`` stack: made once in the data directory, reused.

The broker gets a key pair, and so does each kind of local peer (workers, the frontend,
the operator's commands such as ``mole status``). The peers' public keys go into an
allow-list directory the broker reads, and an ACL lets only the worker key register
services, so a local process without these files can neither register as a worker nor
send requests, and the frontend's key cannot pose as a worker either. Only the operator's
key may use the broker's management services (``mmi.drain``: ``@manage`` in the ACL), so
neither the frontend's nor a worker's key can take workers out of service. Every file is mode
0600 in a 0700 directory: only the user who runs the stack can read them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mole.cli.keys import generate

BROKER = "broker"
#: the peers of a local stack; only ``worker`` may register services and only
#: ``operator`` may manage the broker (see the ACL and ``broker.acl``)
PEERS = ("worker", "frontend", "operator")
ACL_RULES: dict[str, list[str]] = {"worker": ["*"], "operator": ["@manage"]}


@dataclass(frozen=True)
class StackKeys:
    """Where a stack's key files are; the environment each process needs to use them."""

    directory: Path

    @property
    def broker_public(self) -> Path:
        return self.directory / f"{BROKER}.key"

    @property
    def broker_secret(self) -> Path:
        return self.directory / f"{BROKER}.key_secret"

    @property
    def allow_dir(self) -> Path:
        return self.directory / "allowed"

    @property
    def acl(self) -> Path:
        return self.directory / "acl.json"

    def secret(self, peer: str) -> Path:
        return self.directory / f"{peer}.key_secret"

    def broker_env(self) -> dict[str, str]:
        """What ``mole broker`` reads to require CURVE with the allow-list and the ACL."""
        return {
            "MOLE_BROKER_CURVE_SECRET": str(self.broker_secret),
            "MOLE_BROKER_CURVE_ALLOW": str(self.allow_dir),
            "MOLE_BROKER_CURVE_ACL": str(self.acl),
        }

    def peer_env(self, peer: str) -> dict[str, str]:
        """What a worker, the frontend or a client reads to dial the broker under CURVE."""
        if peer not in PEERS:
            raise ValueError(f"unknown peer {peer!r}; one of {', '.join(PEERS)}")
        return {
            "MOLE_CURVE_SERVER_KEY": str(self.broker_public),
            "MOLE_CURVE_SECRET_KEY": str(self.secret(peer)),
        }


def _private(path: Path) -> None:
    os.chmod(path, 0o600)


def ensure_stack_keys(data_dir: Path) -> tuple[StackKeys, list[str]]:
    """Create whatever key file is missing under ``data_dir/keys``; returns the keys and
    the names of the pairs made now (empty when everything was already there)."""
    keys = StackKeys(data_dir / "keys")
    keys.directory.mkdir(parents=True, exist_ok=True)
    os.chmod(keys.directory, 0o700)
    keys.allow_dir.mkdir(exist_ok=True)
    os.chmod(keys.allow_dir, 0o700)
    made = []
    for name in (BROKER, *PEERS):
        public, secret = keys.directory / f"{name}.key", keys.directory / f"{name}.key_secret"
        if not (public.exists() and secret.exists()):
            generate(name, keys.directory, force=True)
            made.append(name)
        _private(public)
        _private(secret)
    for name in PEERS:
        allowed = keys.allow_dir / f"{name}.key"
        if name in made or not allowed.exists():
            shutil.copyfile(keys.directory / f"{name}.key", allowed)
        _private(allowed)
    acl_text = json.dumps(ACL_RULES, indent=2) + "\n"
    if not keys.acl.exists() or keys.acl.read_text() != acl_text:
        keys.acl.write_text(acl_text)
    _private(keys.acl)
    return keys, made
