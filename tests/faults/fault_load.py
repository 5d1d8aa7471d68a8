"""A fixed-rate load on the bus that records every request's outcome at the wire.

One raw DEALER socket sends requests at a fixed rate and reads every message the broker
sends back, so the record shows not only what a well-behaved client library would return
but every FINAL that arrived: a request with none is *lost*, one with two is *duplicated*.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tests.support.peers import RawClient


@dataclass
class LoadReport:
    sent: int
    lost: list[str]
    duplicated: list[str]
    codes: Counter
    workers: Counter = field(default_factory=Counter)
    late_workers: Counter = field(default_factory=Counter)  # who answered in the last part

    def __str__(self) -> str:
        return (
            f"sent {self.sent}, lost {len(self.lost)}, duplicated {len(self.duplicated)}, "
            f"outcomes {dict(self.codes)}, workers {dict(self.workers)}"
        )


class FixedRateLoad:
    def __init__(
        self, endpoint: str, service: str, *, rate: float = 100.0, ttl_ms: int = 5000
    ) -> None:
        self.client = RawClient(endpoint)
        self.service = service
        self.interval = 1.0 / rate
        self.ttl_ms = ttl_ms
        self.sent_at: dict[str, float] = {}
        self.finals: dict[str, list] = defaultdict(list)
        self._next_send = time.monotonic()

    def send_one(self, payload: dict | None = None, ttl_ms: int | None = None) -> str:
        rid = uuid.uuid4().hex
        self.client.send(
            self.service,
            payload or {"n": len(self.sent_at)},
            ttl_ms=ttl_ms or self.ttl_ms,
            request_id=rid,
        )
        self.sent_at[rid] = time.monotonic()
        return rid

    def _receive_until(self, until: float) -> None:
        while True:
            left = until - time.monotonic()
            reply = self.client.recv(max(0.0, left))
            if reply is None:
                return
            if reply.final and reply.request_id is not None:
                self.finals[reply.request_id].append((time.monotonic(), reply))

    def run(self, seconds: float) -> None:
        """Send at the fixed rate for ``seconds`` while collecting replies."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= self._next_send:
                self.send_one()
                self._next_send += self.interval
                if self._next_send < now - 1.0:  # fell far behind: do not burst
                    self._next_send = now
            self._receive_until(min(self._next_send, end))

    def drain(self, grace: float) -> None:
        """Wait for outstanding finals: every deadline plus ``grace`` seconds."""
        end = time.monotonic() + self.ttl_ms / 1000.0 + grace
        while time.monotonic() < end and any(r not in self.finals for r in self.sent_at):
            self._receive_until(min(end, time.monotonic() + 0.2))

    def report(self, since: float | None = None) -> LoadReport:
        codes: Counter = Counter()
        workers: Counter = Counter()
        late: Counter = Counter()
        for rid, finals in self.finals.items():
            _, reply = finals[0]
            codes["ok" if reply.ok else reply.code] += 1
            if reply.ok and isinstance(reply.payload, dict):
                worker = reply.payload.get("worker_id")
                workers[worker] += 1
                if since is not None and self.sent_at.get(rid, 0) >= since:
                    late[worker] += 1
        return LoadReport(
            sent=len(self.sent_at),
            lost=[r for r in self.sent_at if r not in self.finals],
            duplicated=[r for r, f in self.finals.items() if len(f) > 1],
            codes=codes,
            workers=workers,
            late_workers=late,
        )

    def close(self) -> None:
        self.client.close()
