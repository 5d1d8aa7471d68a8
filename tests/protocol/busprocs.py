"""Real processes on loopback for bus tests and benchmarks: the broker and echo workers.

``python -m broker --bind URL`` (settings through its ``MOLE_*`` environment variables,
so short heartbeats and tiny queue bounds need no flags) and
``python -m worker.echo --broker URL --service NAME``. Every process started here is
killed by :meth:`Procs.close`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

#: Short heartbeats so loss is noticed in well under a second in tests.
HEARTBEAT_INTERVAL = 0.2
LIVENESS = 5


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["MOLE_HEARTBEAT_INTERVAL"] = str(HEARTBEAT_INTERVAL)
    env["MOLE_HEARTBEAT_LIVENESS"] = str(LIVENESS)
    env.update(extra)
    return env


class Procs:
    """Starts and always cleans up broker and worker processes for one test."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []
        self._logs = []

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            [PYTHON, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        return proc

    def broker(self, port: int, **env: str) -> subprocess.Popen:
        return self._spawn(
            "broker", ["-m", "mole.broker", "--bind", f"tcp://127.0.0.1:{port}"], _env(**env)
        )

    def echo(
        self,
        url: str,
        service: str,
        *,
        slots: int = 1,
        delay: float = 0.0,
        partials: int = 0,
        worker_id: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        args = [
            "-m",
            "mole.worker.echo",
            "--broker",
            url,
            "--service",
            service,
            "--slots",
            str(slots),
            "--delay",
            str(delay),
            "--partials",
            str(partials),
            "--reconnect-max",
            "0.5",
            "--log-level",
            "WARNING",
        ]
        if worker_id:
            args += ["--worker-id", worker_id]
        return self._spawn("echo", args, _env(**(env or {})))

    def logs(self) -> str:
        for log in self._logs:
            log.flush()
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob("*.log"))
        )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for log in self._logs:
            log.close()


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
