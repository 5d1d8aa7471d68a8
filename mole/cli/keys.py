"""``mole keys generate NAME --dir DIR``: a CURVE key pair for a broker, worker or client.

Writes ``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600) in the ZeroMQ
certificate format that ``zmq.auth`` reads, so a broker's allow-list directory is simply
a folder of public ``.key`` files.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    gen = sub.add_parser("generate", help="create a key pair")
    gen.add_argument("name", help="file stem, e.g. broker, worker-gpu1, frontend")
    gen.add_argument(
        "--dir", type=Path, default=Path("keys"), help="output directory (default ./keys)"
    )
    gen.add_argument(
        "--force", action="store_true", help="overwrite an existing pair (default: refuse)"
    )


def generate(name: str, directory: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Create ``name.key`` and ``name.key_secret`` in ``directory``; returns their paths."""
    import zmq
    import zmq.auth

    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not force and (public.exists() or secret.exists()):
        raise FileExistsError(f"{public} or {secret} exists; pass --force to replace them")
    for path in (public, secret):
        path.unlink(missing_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def run(args: argparse.Namespace) -> int:
    try:
        public, secret = generate(args.name, args.dir, force=args.force)
    except (FileExistsError, RuntimeError) as err:
        print(f"mole keys: {err}", file=sys.stderr)
        return 1
    print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    return 0
