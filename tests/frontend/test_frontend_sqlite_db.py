"""The frontend's SQLite helpers: the cross-process writer lock and the connection set-up."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from mole.frontend import sqlite_db
from mole.frontend.sqlite_db import ProcessLocalConnection, WriterLock
from tests.support.procs import must_wait


def _held_by_someone(lock_file: Path) -> bool:
    """The kernel's answer, from an open file of our own: is an exclusive flock held?"""
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the file drops the probe's own lock, if it got one
    return False


class _RecordingFcntl:
    """Stands in for the ``fcntl`` module inside sqlite_db: notes each flock call (and
    the thread making it) before making it for real."""

    LOCK_EX, LOCK_UN, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_UN, fcntl.LOCK_NB

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def flock(self, fd: int, operation: int) -> None:
        self.calls.append((threading.get_ident(), operation))
        fcntl.flock(fd, operation)


def test_writer_lock_excludes_and_the_kernel_hands_it_to_the_waiter(tmp_path, monkeypatch):
    """Two locks on one file (two open files, as two processes have) exclude each other,
    and the waiter makes one blocking flock call that the kernel completes when the lock
    is released: no retry schedule between release and hand-over."""
    recording = _RecordingFcntl()
    monkeypatch.setattr(sqlite_db, "fcntl", recording)
    first, second = WriterLock(tmp_path / "db"), WriterLock(tmp_path / "db")
    events: list[str] = []
    waiter_ident: list[int] = []

    def wait_for_the_lock() -> None:
        waiter_ident.append(threading.get_ident())
        with second:
            events.append("acquired")

    with first:
        assert _held_by_someone(first.path)
        waiter = threading.Thread(target=wait_for_the_lock)
        waiter.start()
        must_wait(
            lambda: waiter_ident and any(t == waiter_ident[0] for t, _ in recording.calls),
            "the waiter to call flock",
        )
        assert not events  # it is blocked in that call while the first holds the lock
        events.append("released")
    waiter.join(10)
    assert events == ["released", "acquired"]
    waiter_calls = [op for t, op in recording.calls if t == waiter_ident[0]]
    assert waiter_calls == [fcntl.LOCK_EX, fcntl.LOCK_UN]  # one blocking lock, one unlock
    assert not _held_by_someone(first.path)
    first.close()
    second.close()


def test_writer_lock_excludes_another_process(tmp_path):
    """A child process holding the lock (until its stdin closes) excludes us, as the
    kernel reports through a probe of our own; once it exits, the lock is free again."""
    lock = WriterLock(tmp_path / "db")
    code = (
        "import sys; from mole.frontend.sqlite_db import WriterLock\n"
        f"with WriterLock({str(tmp_path / 'db')!r}):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline() == "held\n"
        assert _held_by_someone(lock.path)
        child.stdin.close()  # let it go
        assert child.wait(10) == 0
        assert not _held_by_someone(lock.path)
        with lock:  # and ours is taken at once
            assert _held_by_someone(lock.path)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lock.close()


def test_two_connections_opening_a_new_file_together_both_work(tmp_path):
    """Eight first opens of one new file at once all set WAL mode, create the schema and
    write. (The race that once failed a limiter test did not reproduce here on demand;
    test_frontend_ratelimit's shared-file test is the one that caught it.)"""
    path = tmp_path / "new.sqlite3"
    schema = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER)"
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def open_and_write(n: int) -> None:
        conn = ProcessLocalConnection(path, schema, busy_timeout_s=5)
        try:
            start.wait()
            db = conn.get()
            db.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (f"k{n}", n))
        except BaseException as err:  # reported below
            errors.append(err)
        finally:
            conn.close()

    threads = [threading.Thread(target=open_and_write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 8
