"""``mole drain`` through the broker (``mmi.drain``) on a real CURVE stack (#16 item 4).

A broker with the keys, allow-list and ACL ``mole up`` makes, two echo worker processes
under the worker key, and a client under the frontend key with requests in flight. ``mole
drain A`` under the operator key waits while A finishes what it holds; every request gets
its answer, requests sent meanwhile go to B only, and ``mole drain --resume A`` brings A
back. The frontend's key may not drain.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from mole.cli.stack_keys import StackKeys, ensure_stack_keys
from mole.protocol.client import Client
from mole.protocol.curve import CurveKeys
from tests.cli.rawpeers import ROOT, mole
from tests.support.procs import free_port, wait_until

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE"),
]
SVC = "svc"


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLE_")}
    env.update({"MOLE_HEARTBEAT_INTERVAL": "0.2", "MOLE_HEARTBEAT_LIVENESS": "3", **extra})
    return env


class Stack:
    """Broker and two echo workers (A, B: two slots each) under `mole up`'s keys."""

    def __init__(self, tmp_path: Path) -> None:
        self.keys: StackKeys = ensure_stack_keys(tmp_path)[0]
        self.url = f"tcp://127.0.0.1:{free_port()}"
        self.logs = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []
        self._spawn("broker", ["mole", "broker", "--bind", self.url], self.keys.broker_env())
        for worker in ("A", "B"):
            argv = ["mole.worker.echo", "--broker", self.url, "--service", SVC]
            argv += ["--slots", "2", "--worker-id", worker]
            self._spawn(worker, argv, self.keys.peer_env("worker"))
        self.client = Client(self.url, timeout=30.0, curve=self.curve("frontend"))

    def curve(self, peer: str) -> CurveKeys:
        return CurveKeys.from_files(self.keys.broker_public, self.keys.secret(peer))

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.logs / f"{name}.log", "wb") as out:
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", *argv],
                    cwd=ROOT,
                    env=_env(env),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )

    def workers(self) -> dict[str, dict[str, Any]]:
        with Client(self.url, timeout=5.0, curve=self.curve("operator")) as client:
            return {w["id"]: w for w in client.status(timeout=5.0)["workers"]}

    def mole(self, *argv: str, peer: str = "operator") -> subprocess.CompletedProcess[str]:
        return mole(*argv, "--broker", self.url, env=_env(self.keys.peer_env(peer)))

    def send(self, tag: str, delay_s: float, results: dict[str, Any]) -> threading.Thread:
        """Send one request in a thread; its answer (or the exception) lands in results."""

        def ask() -> None:
            try:
                payload = {"tag": tag, "_echo": {"delay_s": delay_s}}
                results[tag] = self.client.request(SVC, payload, timeout=30.0)
            except Exception as err:  # recorded: the test asserts every answer
                results[tag] = err

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.client.close()
        for process in reversed(self.processes):
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path)
    try:
        ready = wait_until(lambda: set(running.workers()) == {"A", "B"}, timeout=30)
        assert ready, (tmp_path / "broker.log").read_text()
        yield running
    finally:
        running.close()


def _served_by(results: dict[str, Any], tags: list[str]) -> list[str]:
    assert all(isinstance(results.get(t), dict) for t in tags), results
    return [results[t]["worker_id"] for t in tags]


def test_mole_drain_through_the_broker_finishes_work_and_resume_brings_the_worker_back(stack):
    forbidden = stack.mole("drain", "A", peer="frontend")
    assert forbidden.returncode == 1
    assert "forbidden" in forbidden.stderr
    assert stack.workers()["A"]["draining"] is False

    results: dict[str, Any] = {}
    # both workers full for 3 s: long enough for `mole drain` to start on a loaded machine
    busy = [stack.send(f"busy{i}", 3.0, results) for i in range(4)]
    assert wait_until(lambda: stack.workers()["A"]["in_flight"] == 2, timeout=10)

    draining = subprocess.Popen(
        [sys.executable, "-m", "mole", "drain", "A", "--broker", stack.url],
        cwd=ROOT,
        env=_env(stack.keys.peer_env("operator")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_until(lambda: stack.workers()["A"]["draining"], timeout=10)
    later = [stack.send(f"later{i}", 0.1, results) for i in range(4)]  # sent while A drains
    out, err = draining.communicate(timeout=30)
    assert draining.returncode == 0, err
    assert "draining: 2 request(s) in flight" in out  # it waited ...
    assert "worker A (svc) drained: idle" in out  # ... until A was idle
    for thread in busy + later:
        thread.join(30)
    assert sorted(_served_by(results, [f"busy{i}" for i in range(4)])) == ["A", "A", "B", "B"]
    assert _served_by(results, [f"later{i}" for i in range(4)]) == ["B"] * 4
    rows = stack.workers()
    assert rows["A"]["draining"] is True
    assert rows["A"]["in_flight"] == 0

    resumed = stack.mole("drain", "--resume", "A")
    assert resumed.returncode == 0, resumed.stderr
    assert "worker A (svc) resumed" in resumed.stdout
    again = [stack.send(f"again{i}", 0.5, results) for i in range(4)]  # four slots, four
    for thread in again:
        thread.join(30)
    assert sorted(_served_by(results, [f"again{i}" for i in range(4)])) == ["A", "A", "B", "B"]
