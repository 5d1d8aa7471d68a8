"""``mole down``: stop the stack that ``mole up`` runs from the data directory.

It finds ``mole up`` through the stack's record and sends it SIGTERM, which stops the
parts in order (frontend, workers draining their requests, broker), then waits for it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from mole.cli.stack_state import default_data_dir, pid_alive, read_state


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the data directory of `mole up` (default: MOLE_DATA_DIR or ~/.cache/mole)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        metavar="SECONDS",
        help="how long to wait for every process to stop (default 90: workers drain first)",
    )


def run(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or default_data_dir()
    state = read_state(data_dir)
    if state is None:
        print(f"mole down: no stack is running from {data_dir}; nothing to stop")
        return 0
    print(f"mole down: stopping the stack at {state.url} (mole up pid {state.pid})", flush=True)
    try:
        os.kill(state.pid, signal.SIGTERM)
    except ProcessLookupError:
        print("mole down: it had already stopped")
        return 0
    deadline = time.monotonic() + args.timeout
    while pid_alive(state.pid):
        if time.monotonic() > deadline:
            print(
                f"mole down: still stopping after {args.timeout:.0f} s (pid {state.pid}); "
                f"see `mole logs` or {state.log_dir}",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.2)
    print("mole down: stopped")
    return 0
