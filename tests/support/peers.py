"""Raw-pyzmq MDP/0.2 peers and process helpers for broker tests and benchmarks.

Everything here speaks RFC 18 with plain pyzmq sockets, as a third-party peer would, so the
broker is tested without trusting this project's own client library or worker runtime:

* :class:`BrokerProcess` starts ``python -m broker`` on a free loopback port, logs to a
  file, and waits until the broker answers ``mmi.service``.
* :class:`RawClient` is a DEALER that sends MDP client REQUESTs (our two-frame envelope or
  an opaque single frame) and reads replies.
* ``python tests/support/peers.py worker --endpoint URL --service NAME [...]`` runs a raw
  echo worker (heartbeats, reconnect on DISCONNECT or silence, optional per-request delay
  and slots); :func:`start_worker` spawns it, so tests can SIGKILL or SIGSTOP a real process.

Importable as ``tests.support.peers`` (repository root on ``sys.path``) or as ``peers``.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

C_HDR = b"MDPC02"
W_HDR = b"MDPW02"
C_REQUEST, C_PARTIAL, C_FINAL = b"\x01", b"\x02", b"\x03"
W_READY, W_REQUEST, W_PARTIAL, W_FINAL, W_HEARTBEAT, W_DISCONNECT = (
    b"\x01",
    b"\x02",
    b"\x03",
    b"\x04",
    b"\x05",
    b"\x06",
)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: repository root importable, offline HF."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(extra)
    return env


# --------------------------------------------------------------------------- client


class Reply:
    """One message from the broker to a client, decoded where it is ours."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.command = frames[1] if len(frames) > 1 else b""
        self.service = frames[2].decode() if len(frames) > 2 else ""
        self.body = frames[3:]
        self.header: dict | None = None
        self.payload: Any = None
        if self.body:
            try:
                head = unpack(self.body[0])
            except Exception:
                head = None
            if isinstance(head, dict) and head.get("v") == 1 and "id" in head:
                self.header = head
                if len(self.body) > 1:
                    try:
                        self.payload = unpack(self.body[1])
                    except Exception:
                        self.payload = self.body[1]
            elif isinstance(head, dict):  # the broker's error body for opaque requests
                self.payload = head

    @property
    def final(self) -> bool:
        return self.command == C_FINAL

    @property
    def ok(self) -> bool:
        if self.header is not None:
            return bool(self.header.get("ok", True))
        return not (isinstance(self.payload, dict) and "error" in self.payload)

    @property
    def code(self) -> str | None:
        if self.header is not None:
            return self.header.get("code")
        if isinstance(self.payload, dict):
            return self.payload.get("error")
        return None

    @property
    def request_id(self) -> str | None:
        return None if self.header is None else str(self.header["id"])

    def __repr__(self) -> str:
        return f"Reply({self.frames!r})"


class RawClient:
    """An MDP/0.2 client on a plain DEALER socket (one per instance; not thread-safe)."""

    def __init__(
        self, endpoint: str, *, identity: bytes | None = None, context: zmq.Context | None = None
    ) -> None:
        self.endpoint = endpoint
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            self.socket.setsockopt(zmq.IDENTITY, identity)
        self.socket.connect(endpoint)

    def send_raw(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def send(
        self,
        service: str,
        payload: Any = None,
        *,
        ttl_ms: int | None = None,
        request_id: str | None = None,
        attempt: int = 0,
    ) -> str:
        """Send a request in our envelope; returns its request id."""
        request_id = request_id or uuid.uuid4().hex
        header: dict[str, Any] = {"v": 1, "id": request_id, "attempt": attempt}
        if ttl_ms is not None:
            header["ttl"] = int(ttl_ms)
        self.send_raw([C_HDR, C_REQUEST, service.encode(), pack(header), pack(payload)])
        return request_id

    def send_opaque(self, service: str, *body: bytes) -> None:
        """Send a plain RFC 18 request whose body is opaque frames."""
        self.send_raw([C_HDR, C_REQUEST, service.encode(), *body])

    def recv(self, timeout: float = 10.0) -> Reply | None:
        """The next message from the broker, or None after ``timeout`` seconds."""
        if not self.socket.poll(int(timeout * 1000)):
            return None
        return Reply(self.socket.recv_multipart())

    def recv_final(self, timeout: float = 10.0) -> Reply | None:
        """Skip PARTIALs; the next FINAL or None."""
        end = time.monotonic() + timeout
        while True:
            reply = self.recv(max(0.0, end - time.monotonic()))
            if reply is None or reply.final:
                return reply

    def call(
        self,
        service: str,
        payload: Any = None,
        *,
        ttl_ms: int | None = 10_000,
        timeout: float = 10.0,
        request_id: str | None = None,
    ) -> Reply:
        """Send one request and wait for its FINAL (others' replies are not expected)."""
        rid = self.send(service, payload, ttl_ms=ttl_ms, request_id=request_id)
        end = time.monotonic() + timeout
        while True:
            reply = self.recv_final(max(0.0, end - time.monotonic()))
            if reply is None:
                raise TimeoutError(f"no reply to {service} request {rid} in {timeout}s")
            if reply.request_id in (rid, None):
                return reply

    def service_available(self, name: str, timeout: float = 2.0) -> bool:
        reply = None
        rid = uuid.uuid4().hex
        self.send_raw([C_HDR, C_REQUEST, b"mmi.service", pack({"v": 1, "id": rid}), name.encode()])
        end = time.monotonic() + timeout
        while reply is None or reply.request_id != rid:
            reply = self.recv(max(0.0, end - time.monotonic()))
            if reply is None:
                raise TimeoutError("broker did not answer mmi.service")
        return reply.body[1] == b"200"

    def status(self, timeout: float = 5.0) -> dict:
        """The broker's ``mmi.status`` document."""
        rid = uuid.uuid4().hex
        self.send_raw([C_HDR, C_REQUEST, b"mmi.status", pack({"v": 1, "id": rid}), pack({})])
        end = time.monotonic() + timeout
        while True:
            reply = self.recv(max(0.0, end - time.monotonic()))
            if reply is None:
                raise TimeoutError("broker did not answer mmi.status")
            if reply.request_id == rid:
                return reply.payload

    def close(self) -> None:
        self.socket.close(0)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- processes

_LISTENING = re.compile(r"listening on (\S+)")


class BrokerProcess:
    """``python -m broker`` in a subprocess, logging to ``log_path``.

    Args:
        log_path: file for the broker's stdout and stderr.
        bind: endpoint to bind; the default picks a free loopback port.
        flags: extra command-line flags, e.g. ``["--heartbeat-interval", "0.2"]``.
        env: extra environment variables.
        probe: after the "listening" log line, also wait until a plain client gets an
            answer (turn off for a CURVE broker, which plain sockets cannot reach).
    """

    def __init__(
        self,
        log_path: Path,
        *,
        bind: str = "tcp://127.0.0.1:*",
        flags: list[str] | None = None,
        env: dict[str, str] | None = None,
        probe: bool = True,
    ) -> None:
        self.probe = probe
        self.log_path = Path(log_path)
        self.bind = bind
        self.flags = list(flags or [])
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.endpoint: str | None = None
        self._log = None

    def start(self, timeout: float = 30.0) -> str:
        """Start the broker and wait until it answers; return its endpoint."""
        self._log = open(self.log_path, "ab")
        start_at = self._log.tell()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "mole.broker", "--bind", self.bind, *self.flags],
            cwd=ROOT,
            env=child_env(**self.env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

        def bound() -> str | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            text = self.log_path.read_bytes()[start_at:].decode(errors="replace")
            match = _LISTENING.search(text)
            return match.group(1) if match else None

        # imported here: run as a script (a peer process), this module has no tests package
        from tests.support.procs import wait_until

        endpoint = wait_until(bound, timeout, interval=0.02)
        if endpoint is None:
            raise TimeoutError(f"broker did not start:\n{self.log()}")
        self.endpoint = endpoint
        if self.probe:
            with RawClient(endpoint, context=zmq.Context.instance()) as client:
                client.service_available("nothing", timeout=timeout)
        return endpoint

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Kill the process if it still runs and close the log file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


def start_worker(
    endpoint: str,
    service: str,
    *,
    log_path: Path | None = None,
    slots: int = 1,
    delay: float = 0.0,
    heartbeat: float = 0.2,
    liveness: int = 3,
    worker_id: str | None = None,
    identity: str | None = None,
    plain: bool = False,
    extra: list[str] | None = None,
) -> subprocess.Popen:
    """Spawn the raw echo worker of this module as a real process."""
    args = [
        PYTHON,
        str(Path(__file__).resolve()),
        "worker",
        "--endpoint",
        endpoint,
        "--service",
        service,
        "--slots",
        str(slots),
        "--delay",
        str(delay),
        "--heartbeat",
        str(heartbeat),
        "--liveness",
        str(liveness),
    ]
    if worker_id:
        args += ["--worker-id", worker_id]
    if identity:
        args += ["--identity", identity]
    if plain:
        args.append("--plain")
    args += extra or []
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            args, cwd=ROOT, env=child_env(), stdout=out, stderr=subprocess.STDOUT
        )
    finally:
        if log_path:
            out.close()


def stop_process(proc: subprocess.Popen) -> None:
    """SIGKILL a process if it still runs (after SIGCONT, in case it was stopped)."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# --------------------------------------------------------------------------- raw worker


def run_worker(
    endpoint: str,
    service: str,
    *,
    slots: int = 1,
    delay: float = 0.0,
    heartbeat: float = 2.5,
    liveness: int = 3,
    worker_id: str | None = None,
    identity: bytes | None = None,
    plain: bool = False,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """A raw MDP/0.2 echo worker: replies ``{"echo": payload, "worker": id}``.

    It replies to our envelope with ``[reply header, payload]`` and to an opaque body with
    the same frames. ``delay`` holds each request that long without blocking heartbeats.
    ``plain`` sends a READY without the metadata frame (a third-party worker: one slot).
    On DISCONNECT, or when the broker is silent for ``heartbeat * liveness``, it
    reconnects with a fresh socket and registers again.
    """
    worker_id = worker_id or f"raw-{os.getpid()}"
    ctx = zmq.Context.instance()
    meta = pack({"worker_id": worker_id, "service": service, "slots": slots, "pid": os.getpid()})

    def connect() -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(endpoint)
        ready = [W_HDR, W_READY, service.encode()]
        if not plain:
            ready.append(meta)
        sock.send_multipart(ready)
        return sock

    sock = connect()
    heard = time.monotonic()
    next_beat = heard + heartbeat
    pending: list[tuple[float, int, list]] = []  # (due, seq, frames) delayed replies
    seq = 0
    while not stop():
        now = time.monotonic()
        wait = next_beat - now
        if pending:
            wait = min(wait, pending[0][0] - now)
        if sock.poll(max(0, int(wait * 1000))):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                heard = time.monotonic()
                if len(frames) < 2 or frames[0] != W_HDR:
                    continue
                if frames[1] == W_DISCONNECT:
                    sock.close(0)
                    time.sleep(0.05)
                    sock = connect()
                    pending.clear()
                    heard = time.monotonic()
                    break
                if frames[1] == W_REQUEST:
                    reply = _echo(frames, worker_id)
                    if delay > 0:
                        seq += 1
                        heapq.heappush(pending, (time.monotonic() + delay, seq, reply))
                    else:
                        sock.send_multipart(reply)
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            sock.send_multipart(heapq.heappop(pending)[2])
        if now >= next_beat:
            sock.send_multipart([W_HDR, W_HEARTBEAT])
            next_beat = now + heartbeat
        if now - heard > heartbeat * liveness:  # the broker is gone: start again
            sock.close(0)
            sock = connect()
            pending.clear()
            heard = now
    sock.close(0)


def _echo(frames: list[bytes], worker_id: str) -> list[bytes]:
    """The FINAL for one REQUEST ``[MDPW02, 0x02, client, "", body...]``."""
    client, body = frames[2], frames[4:]
    head = None
    if len(body) >= 2:
        try:
            head = unpack(body[0])
        except Exception:
            head = None
    if isinstance(head, dict) and head.get("v") == 1 and "id" in head:
        try:
            payload = unpack(body[1])
        except Exception:
            payload = None
        answer = {
            "echo": payload,
            "worker": worker_id,
            "attempt": head.get("attempt", 0),
            "ttl": head.get("ttl"),
        }
        return [
            W_HDR,
            W_FINAL,
            client,
            b"",
            pack({"v": 1, "id": head["id"], "ok": True}),
            pack(answer),
        ]
    return [W_HDR, W_FINAL, client, b"", *body]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="raw MDP/0.2 peers for broker tests")
    sub = parser.add_subparsers(dest="role", required=True)
    w = sub.add_parser("worker", help="run a raw echo worker")
    w.add_argument("--endpoint", required=True)
    w.add_argument("--service", required=True)
    w.add_argument("--slots", type=int, default=1)
    w.add_argument("--delay", type=float, default=0.0)
    w.add_argument("--heartbeat", type=float, default=2.5)
    w.add_argument("--liveness", type=int, default=3)
    w.add_argument("--worker-id", default=None)
    w.add_argument("--identity", default=None)
    w.add_argument("--plain", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_worker(
        args.endpoint,
        args.service,
        slots=args.slots,
        delay=args.delay,
        heartbeat=args.heartbeat,
        liveness=args.liveness,
        worker_id=args.worker_id,
        identity=args.identity.encode() if args.identity else None,
        plain=args.plain,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
