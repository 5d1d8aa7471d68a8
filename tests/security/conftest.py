"""Fixtures of the CURVE security tests: real key files, a real ``python -m broker`` with
CURVE on, real echo worker processes (``python -m worker.echo`` with MOLE_CURVE_* keys) and
raw DEALER sockets that play attackers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth

from tests.support.peers import (
    ROOT,
    BrokerProcess,
    child_env,
    pack,
    stop_process,
    unpack,
)

#: Heartbeat of the brokers and workers here: revocation must act within one of these.
HEARTBEAT = 0.5
NAMES = ("worker-a", "worker-b", "client-a", "client-b", "intruder")


class Secure:
    """One test's keys, CURVE broker, workers and sockets; :meth:`close` cleans up."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.keys = tmp_path / "keys"
        self.allow = tmp_path / "allow"
        self.allow.mkdir()
        # the broker's pair through the real command; the rest directly (faster)
        subprocess.run(
            [sys.executable, "-m", "mole", "keys", "generate", "broker", "--dir", str(self.keys)],
            cwd=ROOT,
            env=child_env(),
            check=True,
            capture_output=True,
            timeout=60,
        )
        for name in NAMES:
            zmq.auth.create_certificates(str(self.keys), name)
        self.broker: BrokerProcess | None = None
        self.procs: list[subprocess.Popen] = []
        self.sockets: list[zmq.Socket] = []

    def public(self, name: str) -> str:
        return zmq.auth.load_certificate(str(self.keys / f"{name}.key"))[0].decode()

    def allow_keys(self, *names: str) -> None:
        for name in names:
            shutil.copy(self.keys / f"{name}.key", self.allow / f"{name}.key")

    def start(self, *flags: str, heartbeat: float = HEARTBEAT) -> str:
        self.broker = BrokerProcess(
            self.tmp / "broker.log",
            probe=False,
            flags=[
                "--heartbeat-interval",
                str(heartbeat),
                "--liveness",
                "3",
                "--curve-secret",
                str(self.keys / "broker.key_secret"),
                "--curve-allow",
                str(self.allow),
                *flags,
            ],
        )
        return self.broker.start()

    @property
    def url(self) -> str:
        assert self.broker is not None
        assert self.broker.endpoint
        return self.broker.endpoint

    def worker(
        self, key: str, service: str, *, delay: float = 0.0, heartbeat: float = HEARTBEAT
    ) -> subprocess.Popen:
        """A real echo worker process using CURVE keys from the environment."""
        log = open(self.tmp / f"worker-{key}-{len(self.procs)}.log", "ab")
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mole.worker.echo",
                    "--broker",
                    self.url,
                    "--service",
                    service,
                    "--worker-id",
                    f"{key}-{len(self.procs)}",
                    "--delay",
                    str(delay),
                    "--heartbeat-interval",
                    str(heartbeat),
                    "--liveness",
                    "3",
                    "--reconnect-max",
                    "0.5",
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(
                    MOLE_CURVE_SERVER_KEY=str(self.keys / "broker.key"),
                    MOLE_CURVE_SECRET_KEY=str(self.keys / f"{key}.key_secret"),
                ),
            )
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def socket(self, key: str | None, identity: bytes | None = None) -> zmq.Socket:
        """A raw DEALER: CURVE with ``key``'s pair (None: a plain socket)."""
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if identity:
            sock.setsockopt(zmq.IDENTITY, identity)
        if key:
            server, _ = zmq.auth.load_certificate(str(self.keys / "broker.key"))
            public, secret = zmq.auth.load_certificate(str(self.keys / f"{key}.key_secret"))
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
                server,
                public,
                secret,
            )
        sock.connect(self.url)
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(0)
        for proc in self.procs:
            stop_process(proc)
        if self.broker is not None:
            self.broker.stop()


def request(sock: zmq.Socket, service: str, payload, request_id: str, ttl_ms: int = 10_000) -> bool:
    """Send a client REQUEST; False when it could not even be queued (a DEALER whose
    connection the broker refused has no pipe, and a blocking send would hang)."""
    try:
        sock.send_multipart(
            [
                b"MDPC02",
                b"\x01",
                service.encode(),
                pack({"v": 1, "id": request_id, "ttl": ttl_ms}),
                pack(payload),
            ],
            flags=zmq.NOBLOCK,
        )
    except zmq.Again:
        return False
    return True


def reply(sock: zmq.Socket, timeout: float) -> list[bytes] | None:
    """The next FINAL reply on ``sock`` within ``timeout`` seconds, else None."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        if not sock.poll(int(left * 1000) + 1):
            return None
        frames = sock.recv_multipart()
        if frames[1] == b"\x03":
            return frames
    return None


def status(sock: zmq.Socket, timeout: float = 3.0) -> dict | None:
    request(sock, "mmi.status", {}, f"s{time.monotonic_ns()}")
    frames = reply(sock, timeout)
    return unpack(frames[4]) if frames else None


@pytest.fixture
def secure(tmp_path):
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    env = Secure(tmp_path)
    yield env
    env.close()
