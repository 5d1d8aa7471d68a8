"""The frontend's SQLite helpers: the cross-process writer lock and the connection set-up."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

from mole.frontend.sqlite_db import ProcessLocalConnection, WriterLock


def test_writer_lock_excludes_and_wakes_the_waiter_at_once(tmp_path):
    """Two locks on one file (two open files, as two processes have) exclude each other,
    and the waiter gets the lock as soon as it is released, not on a retry schedule."""
    first, second = WriterLock(tmp_path / "db"), WriterLock(tmp_path / "db")
    released_at: list[float] = []
    acquired_at: list[float] = []

    def wait_for_it() -> None:
        with second:
            acquired_at.append(time.monotonic())

    with first:
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        time.sleep(0.3)
        assert not acquired_at  # still held by the first
        released_at.append(time.monotonic())
    waiter.join(5)
    assert acquired_at
    assert acquired_at[0] - released_at[0] < 0.05
    first.close()
    second.close()


def test_writer_lock_excludes_another_process(tmp_path):
    lock = WriterLock(tmp_path / "db")
    code = (
        "import time; from mole.frontend.sqlite_db import WriterLock\n"
        f"with WriterLock({str(tmp_path / 'db')!r}):\n"
        "    print(time.time())\n"
    )
    with lock:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        assert child.poll() is None  # blocked on our lock
        released = time.time()
    acquired = float(child.communicate(timeout=10)[0])
    assert acquired >= released  # the child got the lock only once we let it go
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
