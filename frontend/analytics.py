"""Request analytics kept in SQLite: counts by language, task and model, latency percentiles.

Only routing facts are stored (language, domain, task, model, outcome, latency,
confidence), never the text of a request: texts may hold personal data.

Rows are buffered in memory and written in one transaction at most every
``flush_interval_s`` (and before every summary), so the hot path costs a list append;
every gunicorn worker process writes the same WAL-mode file. On an event loop the write
runs in a thread (it may wait for another process's write), never on the loop itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mole.frontend.sqlite_db import ProcessLocalConnection, WriterLock

T = TypeVar("T")

log = logging.getLogger("mole.frontend.analytics")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    ts         REAL NOT NULL,
    language   TEXT,
    domain     TEXT,
    task       TEXT,
    model      TEXT,
    ok         INTEGER NOT NULL,
    error      TEXT,
    latency_ms REAL NOT NULL,
    confidence REAL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
"""

#: Percentiles are computed over at most this many most recent requests.
LATENCY_WINDOW = 10_000


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return round(sorted_values[index], 3)


class Analytics:
    """Thread-safe, fork-safe (connects lazily per process) analytics store."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        flush_interval_s: float = 1.0,
        retention_s: float = 30 * 86400,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._flush_interval = flush_interval_s
        self._retention = retention_s
        self._buffer: list[tuple[Any, ...]] = []
        self._buffer_lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._connection = ProcessLocalConnection(self.path, _SCHEMA)
        self._writers = WriterLock(self.path)  # processes queue in the kernel, not in SQLite
        self._last_flush = clock()
        self._last_prune = 0.0
        self._flushing = False  # a flush is queued in a thread (event loop callers)
        self._timer_armed = False  # a flush is scheduled for rows that are not due yet

    def _db(self) -> sqlite3.Connection:
        connection: sqlite3.Connection = self._connection.get()
        return connection

    def record(
        self,
        *,
        ok: bool,
        latency_ms: float,
        language: str | None = None,
        domain: str | None = None,
        task: str | None = None,
        model: str | None = None,
        error: str | None = None,
        confidence: float | None = None,
    ) -> None:
        """Note one classification's outcome (no text: only how it was routed)."""
        now = self._clock()
        row = (now, language, domain, task, model, int(ok), error, float(latency_ms), confidence)
        with self._buffer_lock:
            self._buffer.append(row)
            due = now - self._last_flush >= self._flush_interval or len(self._buffer) >= 1000
            if due and self._flushing:
                return
            self._flushing = due
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a plain thread: write now
            if due:
                self._flush_then_clear()
            return
        if due:
            loop.run_in_executor(None, self._flush_then_clear)
        elif not self._timer_armed:
            # NOTE: without it, rows of a process that gets no more traffic would wait for
            # its next request; readers in other processes (stats, the dashboard) would
            # miss them indefinitely. One timer per interval, not one per request.
            self._timer_armed = True
            loop.call_later(self._flush_interval, self._flush_later, loop)

    def _flush_later(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer_armed = False
        with self._buffer_lock:
            if self._flushing or not self._buffer:
                return
            self._flushing = True
        loop.run_in_executor(None, self._flush_then_clear)

    def _flush_then_clear(self) -> None:
        try:
            self.flush()
        except Exception:  # analytics must never fail a request; the rows are lost
            log.exception("analytics write failed")
        finally:
            self._flushing = False

    def flush(self) -> None:
        with self._buffer_lock:
            rows, self._buffer = self._buffer, []
            self._last_flush = self._clock()
        if not rows:
            return
        with self._db_lock, self._writers:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            now = self._clock()
            if now - self._last_prune > 3600:
                db.execute("DELETE FROM events WHERE ts < ?", (now - self._retention,))
                self._last_prune = now
            db.execute("COMMIT")

    def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``query`` on this process's connection after writing out what is buffered,
        so a reader sees every request this process answered (blocking: call it in a
        thread from the event loop)."""
        self.flush()
        with self._db_lock:
            return query(self._db())

    def summary(self) -> dict[str, Any]:
        """Totals, per-language/task/model counts and latency percentiles."""
        self.flush()
        with self._db_lock:
            db = self._db()
            total, errors, avg_conf = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(1 - ok), 0), AVG(confidence) FROM events"
            ).fetchone()
            groups = {}
            for column in ("language", "task", "model"):
                rows = db.execute(
                    f"SELECT COALESCE({column}, 'unknown'), COUNT(*), SUM(1 - ok)"
                    f" FROM events GROUP BY 1 ORDER BY 2 DESC"
                ).fetchall()
                groups[column] = {r[0]: {"requests": r[1], "errors": r[2]} for r in rows}
            by_error = dict(
                db.execute("SELECT error, COUNT(*) FROM events WHERE ok = 0 GROUP BY 1").fetchall()
            )
            latencies = sorted(
                r[0]
                for r in db.execute(
                    "SELECT latency_ms FROM events WHERE ok = 1 ORDER BY ts DESC LIMIT ?",
                    (LATENCY_WINDOW,),
                )
            )
        return {
            "total_requests": total,
            "total_errors": errors,
            "error_rate": round(errors / total, 4) if total else 0.0,
            "avg_confidence": None if avg_conf is None else round(avg_conf, 4),
            "by_language": groups["language"],
            "by_task": groups["task"],
            "by_model": groups["model"],
            "errors_by_code": by_error,
            "latency_ms": {
                "window": len(latencies),
                "p50": _percentile(latencies, 0.50),
                "p90": _percentile(latencies, 0.90),
                "p99": _percentile(latencies, 0.99),
                "mean": round(sum(latencies) / len(latencies), 3) if latencies else None,
            },
        }

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._db_lock:
                self._connection.close()
                self._writers.close()
