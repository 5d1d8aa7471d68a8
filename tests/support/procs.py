"""Process helpers shared by the process-level tests and the benchmarks: free loopback
ports, polling waits, spawning a logged child, stopping it, and finding what it left.

One copy of each, so a fix (a port race, a zombie counted as alive) lands everywhere.
Benchmarks run as scripts put the repository root on ``sys.path`` before importing this.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import zmq

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now. The OS picks it, so two
    callers never get the same one while both sockets are open; a child binds it soon after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _poll(
    predicate: Callable[[], T], timeout: float, interval: float
) -> tuple[T | None, BaseException | None]:
    """Poll ``predicate`` until it returns something true or ``timeout`` seconds pass:
    (that value or None, the last exception it raised). Exceptions count as "not yet" (the
    peer may still be starting)."""
    end = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value, None
        except Exception as err:  # the peer may not be up yet
            last_error = err
        if time.monotonic() >= end:
            return None, last_error
        time.sleep(interval)


def wait_until(
    predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05
) -> T | None:
    """Poll ``predicate`` until it returns something true and return that; None when
    ``timeout`` seconds pass first (for a caller that asserts, or reports, itself)."""
    return _poll(predicate, timeout, interval)[0]


def must_wait(
    predicate: Callable[[], T], what: str, timeout: float = 20.0, interval: float = 0.02
) -> T:
    """Like :func:`wait_until`, but a timeout fails the test: AssertionError naming
    ``what`` was awaited and the last exception the predicate raised. The timeout is a
    generous bound on a wait for a condition, never a measurement."""
    value, last_error = _poll(predicate, timeout, interval)
    if not value:
        detail = f" (last error: {last_error!r})" if last_error is not None else ""
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
    return value


async def must_wait_async(
    predicate: Callable[[], T], what: str, timeout: float = 20.0, interval: float = 0.01
) -> T:
    """:func:`must_wait` for a coroutine: polls ``predicate`` between ``asyncio.sleep``
    calls, so the event loop (and the client under test on it) keeps running."""
    end = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as err:  # not ready yet
            last_error = err
        if time.monotonic() >= end:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        await asyncio.sleep(interval)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when a GET of ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_http(url: str, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until ``url`` answers 200, or fail naming ``log`` when the process that should
    serve it exits or ``timeout`` seconds pass."""
    wait_until(lambda: process.poll() is not None or http_ok(url), timeout, interval=0.3)
    if process.poll() is not None:
        raise RuntimeError(f"{url}: process exited ({process.returncode}); see {log}")
    if not http_ok(url):
        raise RuntimeError(f"{url} not ready after {timeout:.0f} s; see {log}")


def spawn(
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log`` (read it when it fails)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 20.0) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` right now (children, their children, ...)."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def bind_when_free(sock: zmq.Socket[bytes], url: str, timeout: float) -> None:
    """Bind ``sock`` to ``url``, retrying while the address is still in use: a test broker
    restarted on the port it had (libzmq closes the old listener asynchronously). Fails the
    test after ``timeout`` seconds."""

    def bound() -> bool:
        try:
            sock.bind(url)
        except zmq.ZMQError as err:
            if err.errno != zmq.EADDRINUSE:
                raise
            return False
        return True

    must_wait(bound, f"{url} to be free to bind", timeout=timeout)


#: Prefix that starts a command with SIGINT ignored, as a background job of a
#: non-interactive shell or a pytest-xdist worker's child has it (Python then installs no
#: KeyboardInterrupt handler).
IGNORING_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def interrupt(process: subprocess.Popen[str], what: str, timeout: float = 30.0) -> int:
    """Send Ctrl-C's signal and return the exit code; raise with every thread's stack if
    the process keeps running (start it with ``PYTHONFAULTHANDLER=1`` for the stacks)."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)  # faulthandler dumps every thread to stderr
        process.wait(10)
        stderr = process.stderr.read() if process.stderr else ""
        raise AssertionError(f"{what} did not stop on SIGINT; stderr: {stderr}") from None
