"""Shared helpers of the broker tests: a real ``python -m broker`` process, raw workers and
raw clients (``tests/support/peers.py``), all cleaned up by :meth:`Bus.close`.
"""

from pathlib import Path

import zmq

from tests.support.peers import (
    BrokerProcess,
    RawClient,
    start_worker,
    stop_process,
)
from tests.support.procs import wait_until

#: Short heartbeats: a silent worker is purged after HEARTBEAT * LIVENESS = 0.6 s.
HEARTBEAT = 0.2
LIVENESS = 3

#: Broker flags for tests whose raw workers never heartbeat: a silent worker is kept for
#: 15 s, not 0.6 s, so a slow machine cannot purge it before the test is done with it (a CI
#: run lost a reply that way). Only for tests that never wait for an expiry.
SILENT_WORKER_KEPT = ("--heartbeat-interval", "5")


class Bus:
    """One test's broker processes, raw worker processes and raw clients; all cleaned up."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.brokers: list[BrokerProcess] = []
        self.workers = []
        self.clients: list[RawClient] = []

    def broker(
        self,
        *flags: str,
        bind: str = "tcp://127.0.0.1:*",
        env: dict[str, str] | None = None,
        probe: bool = True,
    ) -> BrokerProcess:
        proc = BrokerProcess(
            self.tmp_path / f"broker{len(self.brokers)}.log",
            bind=bind,
            flags=["--heartbeat-interval", str(HEARTBEAT), "--liveness", str(LIVENESS), *flags],
            env=env,
            probe=probe,
        )
        self.brokers.append(proc)
        proc.start()
        return proc

    def worker(self, endpoint: str, service: str, **kwargs):
        kwargs.setdefault("heartbeat", HEARTBEAT)
        kwargs.setdefault("liveness", LIVENESS)
        proc = start_worker(
            endpoint, service, log_path=self.tmp_path / f"worker{len(self.workers)}.log", **kwargs
        )
        self.workers.append(proc)
        return proc

    def client(self, endpoint: str, **kwargs) -> RawClient:
        client = RawClient(endpoint, **kwargs)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for proc in self.workers:
            stop_process(proc)
        for broker in self.brokers:
            broker.stop()


def workers_of(client: RawClient, service: str) -> list[dict]:
    return [w for w in client.status()["workers"] if w["service"] == service]


def wait_workers(
    client: RawClient,
    service: str,
    count: int,
    timeout: float = 20.0,
    heartbeat_from: tuple[zmq.Socket, ...] = (),
) -> list:
    """Wait until exactly ``count`` workers of ``service`` are registered; return them.

    ``heartbeat_from``: registered worker sockets that the test drives by hand. Each sends
    a HEARTBEAT per check, so the broker (which purges a worker after 0.6 s of silence)
    keeps them while the test waits for a slower worker process to start.
    """
    seen: list = []

    def check() -> bool:
        for sock in heartbeat_from:
            sock.send_multipart([b"MDPW02", b"\x05"])
        seen[:] = workers_of(client, service)
        return len(seen) == count

    assert wait_until(check, timeout), f"expected {count} worker(s) of {service}: {seen}"
    return seen


__all__ = [
    "HEARTBEAT",
    "LIVENESS",
    "SILENT_WORKER_KEPT",
    "Bus",
    "wait_until",
    "wait_workers",
    "workers_of",
]
