"""Start ``mole up`` as a real process for end-to-end tests, and talk to it over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.procs import ROOT, free_port


@dataclass
class HttpReply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def http(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    form: dict[str, str] | None = None,
    token: str | None = None,
    timeout: float = 60.0,
) -> HttpReply:
    headers: dict[str, str] = {}
    data: bytes | None = None
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpReply(
                response.status, json.loads(response.read() or b"{}"), dict(response.headers)
            )
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"raw": raw.decode(errors="replace")}
        return HttpReply(err.code, body, {k.lower(): v for k, v in err.headers.items()})


class Stack:
    """A running ``mole up`` (distributed or monolithic) on free ports.

    ``python`` and ``cwd`` choose which installation of MoLE runs: by default this
    checkout's (the test interpreter, from the repository root); the packaging tests pass a
    fresh venv holding the built wheel, a folder outside the repository and an environment
    (``environ``, instead of this process's) without PYTHONPATH."""

    def __init__(
        self,
        data_dir: Path,
        tiny: Path,
        *,
        monolithic: bool = False,
        env: dict[str, str] | None = None,
        models: list[str] | None = None,
        registry: Path | None = None,
        python: str = sys.executable,
        cwd: Path = ROOT,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.broker_port = free_port()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.broker_url = f"tcp://127.0.0.1:{self.broker_port}"
        argv = [
            python,
            "-m",
            "mole",
            "up",
            "--data-dir",
            str(data_dir),
            "--models-dir",
            str(tiny / "models"),
            "--adapters-dir",
            str(tiny / "adapters"),
            "--broker-port",
            str(self.broker_port),
            "--http-port",
            str(self.http_port),
            "--frontend-workers",
            "1",
            "--ready-timeout",
            "420",
        ]
        if monolithic:
            argv.append("--monolithic")
        if models:
            argv += ["--models", ",".join(models)]
        if registry is not None:
            argv += ["--registry", str(registry)]
        self.output: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**(os.environ if environ is None else environ), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read_output, daemon=True).start()

    def _read_output(self) -> None:
        assert self.process.stdout is not None  # started with stdout=PIPE
        for line in self.process.stdout:
            self.output.append(line.rstrip())
            if "] ready in " in line:
                self.ready.set()

    def wait_ready(self, timeout: float = 480.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(1.0):
            if self.process.poll() is not None or time.monotonic() > deadline:
                logs = "\n".join(self.output[-40:])
                raise RuntimeError(f"mole up did not become ready:\n{logs}\n{self.log_tails()}")

    def log_tails(self, lines: int = 15) -> str:
        parts = []
        for path in sorted((self.data_dir / "logs").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def admin_token(self) -> str:
        creds = json.loads((self.data_dir / "local-admin.json").read_text())
        reply = http("POST", f"{self.url}/api/v1/auth/token", form=creds)
        assert reply.status == 200, reply.body
        return str(reply.body["access_token"])
