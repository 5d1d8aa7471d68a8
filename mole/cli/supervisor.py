"""Start, watch, restart and stop the child processes of a one-machine stack.

Children run in their own sessions so a terminal's Ctrl-C reaches only the supervisor. A
child that dies is started again after a back-off that doubles from ``backoff_initial`` to
``backoff_max`` and starts over once the child has stayed up for ``stable_after`` seconds,
so a crash loop costs little and a rare crash heals fast. The restart policy says which
exits count: ``always`` (the broker, the frontend: the stack needs them) or ``on-failure``
(workers: exit status 0 means a drained worker that was asked to stop); exit status 2
(a setting or file the process cannot use) is never restarted.

Stopping goes tier by tier, highest first (frontend, then workers, then broker), each
with SIGTERM and SIGKILL after its grace period, so the frontend finishes its requests
while workers and broker still serve them, and workers drain while the broker still routes
their answers. On Linux each child also gets a parent-death signal, so even a supervisor
killed with SIGKILL leaves no orphans behind.
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
from typing import IO, Literal

_PR_SET_PDEATHSIG = 1

RestartPolicy = Literal["never", "always", "on-failure"]
#: The exit status MoLE's commands use for a setting or file they cannot use: restarting
#: would fail the same way, so such a child is never restarted.
CONFIG_ERROR_EXIT = 2


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the supervisor's own shutdown still stops children


@dataclass
class Child:
    """One supervised process and its restart bookkeeping."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    restart: RestartPolicy = "never"
    tier: int = 0
    grace: float = 10.0
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float | None = None  # when a scheduled restart is due
    backoff: float = 0.0
    last_exit: int | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wants_restart(self, code: int) -> bool:
        if code == CONFIG_ERROR_EXIT:  # it would fail the same way again
            return False
        if self.restart == "always":
            return True
        return self.restart == "on-failure" and code != 0


@dataclass(frozen=True)
class Event:
    """Something :meth:`Supervisor.check` saw: ``exited`` (with a restart due or not) or
    ``restarted``."""

    child: Child
    kind: Literal["exited", "restarted"]
    code: int | None = None
    restart_in: float | None = None


class Supervisor:
    """Owns a set of child processes; logs of each go to ``<log_dir>/<name>.log``."""

    def __init__(
        self,
        log_dir: Path,
        *,
        grace_seconds: float = 10.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 30.0,
        stable_after: float = 30.0,
    ) -> None:
        self.log_dir = log_dir
        self.grace_seconds = grace_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        *,
        restart: RestartPolicy = "never",
        tier: int = 0,
        grace: float | None = None,
    ) -> Child:
        child = Child(
            name,
            argv,
            {**os.environ, **(env or {})},
            self.log_dir / f"{name.replace('/', '_')}.log",
            restart=restart,
            tier=tier,
            grace=self.grace_seconds if grace is None else grace,
            backoff=self.backoff_initial,
        )
        self._spawn(child)
        self.children.append(child)
        return child

    def _spawn(self, child: Child) -> None:
        if child._log_file is None:
            child._log_file = open(child.log_path, "ab")
        child.process = subprocess.Popen(
            child.argv,
            env=child.env,
            stdin=subprocess.DEVNULL,
            stdout=child._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        child.started_at = time.monotonic()
        child.next_start = None

    def check(self, now: float | None = None) -> list[Event]:
        """Reap children that exited, schedule their restart, start those that are due.

        Never sleeps: a back-off is a due time, so one crashing child does not delay the
        supervision of the others.
        """
        now = time.monotonic() if now is None else now
        events: list[Event] = []
        for child in self.children:
            if child.next_start is not None:
                if now >= child.next_start:
                    child.restarts += 1
                    self._spawn(child)
                    events.append(Event(child, "restarted"))
                continue
            if child.process is None or child.process.poll() is None:
                continue
            code = child.process.returncode
            child.last_exit = code
            if not child.wants_restart(code):
                child.process = None
                events.append(Event(child, "exited", code))
                continue
            if now - child.started_at >= self.stable_after:
                child.backoff = self.backoff_initial  # it ran well: a fresh crash heals fast
            delay = child.backoff
            child.backoff = min(child.backoff * 2, self.backoff_max)
            child.next_start = now + delay
            events.append(Event(child, "exited", code, delay))
        return events

    def stop_all(self) -> None:
        """Stop every child, highest tier first: SIGTERM, then SIGKILL after its grace."""
        for child in self.children:
            child.next_start = None  # no restart is due any more
        for tier in sorted({c.tier for c in self.children}, reverse=True):
            group = [c for c in self.children if c.tier == tier]
            for child in group:
                if child.alive() and child.process is not None:
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + max(c.grace for c in group)
            for child in group:
                if child.process is None:
                    continue
                try:
                    child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
        for child in self.children:
            if child._log_file is not None:
                child._log_file.close()
                child._log_file = None
