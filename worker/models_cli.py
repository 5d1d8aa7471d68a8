"""``mole models tiny --out DIR``: generate tiny offline models and LoRA adapters.

They have the registry's architectures and adapter layout but random weights: for tests
and the one-command local stack, never for answers that mean anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _default_out() -> Path:
    root = Path(os.environ.get("MOLE_DATA_DIR", "~/.cache/mole")).expanduser()
    return root / "tiny"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    tiny = sub.add_parser("tiny", help="generate tiny random-weight models and adapters")
    tiny.add_argument(
        "--out",
        default=None,
        help="destination (default $MOLE_DATA_DIR/tiny, i.e. ~/.cache/mole/tiny)",
    )
    tiny.add_argument("--registry", default=None, help="experts registry file")
    tiny.add_argument(
        "--size",
        choices=("test", "bench"),
        default="test",
        help="test: ~1 M parameters (seconds); bench: ~25 M parameters",
    )
    tiny.add_argument(
        "--model-key",
        action="append",
        default=None,
        dest="keys",
        help="only this base_model_key (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) != "tiny":
        print(
            "usage: mole models tiny [--out DIR] [--size test|bench] [--model-key KEY]",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mole.protocol.registry import RegistryError, load_registry
    from mole.worker.tiny import generate

    out = Path(args.out).expanduser() if args.out else _default_out()
    t0 = time.perf_counter()
    try:
        registry = load_registry(args.registry)
        summary = generate(out, registry=registry, size=args.size, keys=args.keys, log=print)
    except (RegistryError, ValueError) as err:
        print(f"mole models tiny: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {len(summary['models'])} tiny models and {len(summary['adapters'])} adapters "
        f"to {out} in {time.perf_counter() - t0:.1f} s (random weights: predictions mean "
        "nothing)"
    )
    print(f"use them with: MOLE_MODELS_DIR={out / 'models'} MOLE_ADAPTERS_DIR={out / 'adapters'}")
    return 0
