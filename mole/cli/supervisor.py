"""Start, watch and stop the child processes of a one-machine stack.

Children run in their own sessions so a terminal's Ctrl-C reaches only the supervisor,
which then stops them in the reverse order of their start (frontend, workers, broker) with
SIGTERM, and SIGKILL after a grace period. On Linux each child also gets a parent-death
signal, so even a supervisor killed with SIGKILL leaves no orphans behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the supervisor's own shutdown still stops children


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    restart: bool = False
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    _log_file: object | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    """Owns a set of child processes; logs of each go to ``<log_dir>/<name>.log``."""

    def __init__(self, log_dir: Path, *, grace_seconds: float = 10.0) -> None:
        self.log_dir = log_dir
        self.grace_seconds = grace_seconds
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        *,
        restart: bool = False,
    ) -> Child:
        child = Child(
            name,
            argv,
            {**os.environ, **(env or {})},
            self.log_dir / f"{name.replace('/', '_')}.log",
            restart=restart,
        )
        self._spawn(child)
        self.children.append(child)
        return child

    def _spawn(self, child: Child) -> None:
        log = open(child.log_path, "ab")
        child._log_file = log
        child.process = subprocess.Popen(
            child.argv,
            env=child.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        child.started_at = time.monotonic()

    def check(self) -> list[Child]:
        """Children that exited on their own since the last call; restartable ones restart."""
        dead = []
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                dead.append(child)
                if child.restart and child.restarts < 5:
                    child.restarts += 1
                    time.sleep(min(2.0**child.restarts * 0.25, 5.0))
                    self._spawn(child)
        return dead

    def stop_all(self) -> None:
        """SIGTERM every child, newest first; SIGKILL what is left after the grace period."""
        for child in reversed(self.children):
            if child.alive():
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for child in reversed(self.children):
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            if child._log_file is not None:
                child._log_file.close()
