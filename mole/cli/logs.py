"""``mole logs [PART]``: the logs of the processes ``mole up`` runs.

Without PART it shows the end of every log; PART picks one by name or unique prefix
(``broker``, ``frontend``, ``worker-llama``). ``--follow`` keeps printing what is appended.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mole.cli.interrupt import let_ctrl_c_interrupt
from mole.cli.stack_state import default_data_dir, read_state


class NoSuchLog(Exception):
    """No log, or no single log, matches what was asked for."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "part",
        nargs="?",
        default=None,
        help="broker, frontend, worker-<model key>, or a unique prefix (default: every log)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the data directory of `mole up` (default: MOLE_DATA_DIR or ~/.cache/mole)",
    )
    parser.add_argument(
        "-n",
        "--lines",
        type=int,
        default=40,
        help="how many of the last lines to show per log (default 40; 0 for all)",
    )
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new lines until Ctrl-C (default: print and exit)",
    )


def log_dir(data_dir: Path | None) -> Path:
    state = read_state(data_dir)
    if state is not None:
        return Path(state.log_dir)
    return (data_dir or default_data_dir()) / "logs"


def select(directory: Path, part: str | None) -> list[Path]:
    """The log files PART names (all of them when None)."""
    logs = sorted(directory.glob("*.log"))
    if not logs:
        raise NoSuchLog(f"no logs in {directory}; has `mole up` run with this data directory?")
    if part is None:
        return logs
    exact = [p for p in logs if p.stem == part]
    if exact:
        return exact
    matches = [p for p in logs if p.stem.startswith(part)]
    if len(matches) == 1:
        return matches
    names = ", ".join(p.stem for p in logs)
    if not matches:
        raise NoSuchLog(f"no log named {part!r}; there are: {names}")
    raise NoSuchLog(f"{part!r} matches several logs ({', '.join(p.stem for p in matches)})")


def tail(path: Path, lines: int) -> list[str]:
    text = path.read_text(errors="replace").splitlines()
    return text if lines <= 0 else text[-lines:]


def run(args: argparse.Namespace) -> int:
    try:
        paths = select(log_dir(args.data_dir), args.part)
    except NoSuchLog as err:
        print(f"mole logs: {err}", file=sys.stderr)
        return 2
    many = len(paths) > 1
    for path in paths:
        if many:
            print(f"==> {path.stem} ({path}) <==")
        for line in tail(path, args.lines):
            print(f"{path.stem} | {line}" if many else line)
    sys.stdout.flush()
    if not args.follow:
        return 0
    offsets = {path: path.stat().st_size for path in paths}
    let_ctrl_c_interrupt()  # even when started with SIGINT ignored
    try:
        while True:
            for path in paths:
                size = path.stat().st_size
                if size < offsets[path]:  # rotated or truncated: start over
                    offsets[path] = 0
                if size > offsets[path]:
                    with open(path, "rb") as f:
                        f.seek(offsets[path])
                        chunk = f.read()
                    offsets[path] += len(chunk)
                    for line in chunk.decode(errors="replace").splitlines():
                        print(f"{path.stem} | {line}" if many else line)
                    sys.stdout.flush()
            time.sleep(0.3)
    except KeyboardInterrupt:
        return 0
