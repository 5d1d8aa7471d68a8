"""Fault-suite fixtures: a broker process with fast heartbeats and real echo workers
(the project's worker runtime, ``python -m worker.echo``) as separate processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.peers import ROOT, BrokerProcess, child_env

HEARTBEAT = 0.2
LIVENESS = 3


class Bus:
    """A broker and the echo workers started against it; everything stops at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.broker = BrokerProcess(
            tmp / "broker.log",
            flags=["--heartbeat-interval", str(HEARTBEAT), "--liveness", str(LIVENESS)],
        )
        self.workers: list[subprocess.Popen] = []

    def start_broker(self, bind: str | None = None) -> str:
        if bind:
            self.broker.bind = bind
            if "127.0.0.1" not in bind:
                # the fault tests bind the test's own veth address between two network
                # namespaces they made: plain text on purpose (the link is what is tested)
                self.broker.flags.append("--insecure")
        return self.broker.start()

    def start_worker(
        self,
        service: str,
        worker_id: str,
        *,
        slots: int = 4,
        delay: float = 0.02,
        prefix: list[str] | None = None,
        endpoint: str | None = None,
    ) -> subprocess.Popen:
        argv = [
            *(prefix or []),
            sys.executable,
            "-m",
            "mole.worker.echo",
            "--broker",
            endpoint or self.broker.endpoint,
            "--service",
            service,
            "--worker-id",
            worker_id,
            "--slots",
            str(slots),
            "--delay",
            str(delay),
            "--heartbeat-interval",
            str(HEARTBEAT),
            "--liveness",
            str(LIVENESS),
            "--reconnect-max",
            "0.5",
        ]
        log = open(self.tmp / f"{worker_id}.log", "ab")
        process = subprocess.Popen(
            argv, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT
        )
        self.workers.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.tmp.glob("*.log"))
        )

    def close(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.kill()
            process.wait()
        self.broker.stop()


@pytest.fixture
def bus(tmp_path):
    made = Bus(tmp_path)
    yield made
    made.close()
