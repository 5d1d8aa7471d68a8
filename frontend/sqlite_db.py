"""One SQLite connection per process, opened lazily, for the frontend's small stores.

Users, analytics and rate-limit buckets each keep a file in the data directory that every
gunicorn worker process shares. A connection must never cross a fork (docs/design.md), so
each store holds a :class:`ProcessLocalConnection` that opens a fresh connection the first
time it is used in a process, in WAL mode so readers do not block the writer. Callers
serialise their own use of it with their own lock.

The files hold password hashes and who asked for what, so each is created mode 0600 in a
directory created 0700, and an existing file readable by others is narrowed to 0600
(SQLite gives its ``-wal`` and ``-shm`` files the database file's mode).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path


class ProcessLocalConnection:
    """A lazily opened WAL connection that is reopened after a fork.

    Args:
        path: the database file (its directory is created).
        schema: SQL run once per new connection (``CREATE TABLE IF NOT EXISTS ...``).
        synchronous: SQLite's ``synchronous`` pragma (``NORMAL``; ``OFF`` for data that
            may be lost in a power cut, such as rate-limit buckets).
        busy_timeout_s: how long a writer waits for another process's transaction.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        schema: str,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self._schema = schema
        self._synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None

    def get(self) -> sqlite3.Connection:
        """This process's connection (autocommit; use explicit BEGIN for transactions)."""
        if self._conn is None or self._pid != os.getpid():
            private_file(self.path)
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
                # NOTE: two processes opening a new file at once can get "database is
                # locked" at once, without the busy timeout (SQLite's deadlock avoidance
                # when a reader wants to write, and the switch to WAL): retry those, and
                # take the write lock up front for the schema
                _retry_locked(
                    lambda: conn.execute("PRAGMA journal_mode=WAL"), conn, self._busy_timeout_s
                )
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                _retry_locked(
                    lambda: conn.executescript(f"BEGIN IMMEDIATE;\n{self._schema};\nCOMMIT;"),
                    conn,
                    self._busy_timeout_s,
                )
            except BaseException:
                conn.close()  # the next call opens it again
                raise
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def close(self) -> None:
        """Close this process's connection; one inherited through fork is left alone."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None


def private_file(path: Path) -> None:
    """Make ``path`` exist with mode 0600 (its directory 0700 when created here)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)


class WriterLock:
    """A blocking cross-process lock beside a database file, for its short writes.

    SQLite makes a writer that finds another process's write transaction retry on a
    sleep schedule (1, 2, 5, 10, 15, 20, 25 ms ...), so two gunicorn processes writing one
    file on every request gave a p99 of 20+ ms at 8 connections. Taking this
    ``fcntl.flock`` first queues the writers in the kernel, which wakes the next one as
    soon as the lock is free; SQLite's own locking then never waits. The lock file is
    opened lazily in each process (never across a fork). Callers serialise their own
    threads first (flock locks belong to the open file, which the threads share).
    """

    def __init__(self, database: str | os.PathLike[str]) -> None:
        self.path = Path(f"{database}.writer-lock")
        self._fd: int | None = None
        self._pid: int | None = None

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def __enter__(self) -> WriterLock:
        fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._descriptor(), fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


def _retry_locked(step: Callable[[], object], conn: sqlite3.Connection, timeout_s: float) -> None:
    """Run ``step``, again while SQLite says the database is locked, for ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as err:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            message = str(err).lower()
            if ("locked" not in message and "busy" not in message) or (
                time.monotonic() >= deadline
            ):
                raise
        time.sleep(delay)
        delay = min(0.1, delay * 2)
