"""``mole models tiny`` and ``mole models check``.

``tiny --out DIR`` generates tiny offline models and LoRA adapters: the registry's
architectures and adapter layout with random weights, for tests and the one-command local
stack, never for answers that mean anything. ``check [KEY…]`` loads base models with their
adapters as a worker would and asks each adapter once (see :mod:`mole.worker.models_check`).
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

    check = sub.add_parser(
        "check",
        help="load base models with their adapters as a worker would; one request each",
    )
    check.add_argument("keys", nargs="*", metavar="KEY", help="base_model_keys (default: all)")
    check.add_argument("--registry", default=None, help="experts registry file")
    check.add_argument("--models-dir", default=None, help="base models by key (MOLE_MODELS_DIR)")
    check.add_argument("--adapters-dir", default=None, help="adapters root (MOLE_ADAPTERS_DIR)")
    check.add_argument("--device", default=None, help="auto, cpu or cuda[:n] (MOLE_DEVICE)")
    check.add_argument(
        "--load-in-4bit", action="store_true", help="force nf4 even on CPU (MOLE_FORCE_4BIT)"
    )
    check.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        help="generation budget of the PII check request (default 64)",
    )


USAGE = (
    "usage: mole models tiny [--out DIR] [--size test|bench] [--model-key KEY]\n"
    "       mole models check [KEY ...] [--models-dir DIR] [--adapters-dir DIR] [--device D]"
)


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "action", None)
    if action == "check":
        return run_check(args)
    if action != "tiny":
        print(USAGE, file=sys.stderr)
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


def run_check(args: argparse.Namespace) -> int:
    """Print the check table; exit 0 when every adapter answered, 1 otherwise."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported
    from mole.protocol.registry import RegistryError, load_registry
    from mole.worker.cli import apply_model_flags
    from mole.worker.engine.settings import EngineSettings
    from mole.worker.models_check import CheckRow, check_models, format_table

    try:
        registry = load_registry(args.registry)
    except RegistryError as err:
        print(f"mole models check: {err}", file=sys.stderr)
        return 2
    unknown = [k for k in args.keys if k not in registry.base_models]
    if unknown:
        print(
            f"mole models check: not in the registry's base_models: {', '.join(unknown)} "
            f"(has: {', '.join(registry.base_models)})",
            file=sys.stderr,
        )
        return 2
    settings = EngineSettings(warmup=False)
    apply_model_flags(settings, args)
    keys = list(args.keys) or list(registry.base_models)

    def progress(key: str, rows: list[CheckRow]) -> None:
        failed = sum(not r.ok for r in rows)
        print(f"checked {key}: {len(rows) - failed}/{len(rows)} adapters ok", flush=True)

    rows = check_models(
        keys, registry, settings, max_new_tokens=args.max_new_tokens, on_model=progress
    )
    print()
    print(format_table(rows))
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} adapters answered")
    return 1 if failed else 0
