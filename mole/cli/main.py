"""Dispatch ``mole <subcommand>`` to the package that owns it.

Each subcommand module exposes ``configure(parser)`` and ``run(args) -> int``. Modules are
imported only when their subcommand runs, so ``mole broker`` or ``mole status`` never pay
for importing torch. Commands that talk to the broker (``status``) are pointed at the stack
``mole up`` runs (its record in the data directory) unless the environment names a broker.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("mole.broker.cli", "run the Majordomo broker"),
    "status": ("mole.broker.status_cli", "show the broker's services and workers"),
    "worker": ("mole.worker.cli", "run an expert worker for one base model"),
    "models": (
        "mole.worker.models_cli",
        "generate tiny offline models and adapters, or check real ones (mole models check)",
    ),
    "gating": ("mole.gating.cli", "train and try the gating models"),
    "frontend": ("mole.frontend.cli", "run the HTTP frontend under gunicorn"),
    "users": ("mole.frontend.users_cli", "manage frontend users"),
    "up": ("mole.cli.up", "run the whole stack on this machine"),
    "down": ("mole.cli.down", "stop the stack `mole up` runs"),
    "logs": ("mole.cli.logs", "show the logs of the stack `mole up` runs"),
    "drain": ("mole.cli.drain", "take one worker out of service, finishing its requests"),
    "classify": ("mole.cli.classify", "send one classification through the running stack"),
    "keys": ("mole.cli.keys", "generate CURVE key pairs"),
}

#: subcommands that read MOLE_BROKER_URL / MOLE_CURVE_* while adding their flags
FIND_RUNNING_STACK = ("status",)


def version_text() -> str:
    from mole import __version__

    return f"mole {__version__}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mole", description="MoLE: mixture of language experts")
    parser.add_argument("-V", "--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        print(version_text())
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}")
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    module_name, help_text = SUBCOMMANDS[name]
    if name in FIND_RUNNING_STACK:
        from mole.cli.stack_state import apply_stack_defaults

        apply_stack_defaults(os.environ)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            print(f"mole {name}: not available in this build", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"mole {name}", description=help_text)
    module.configure(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
