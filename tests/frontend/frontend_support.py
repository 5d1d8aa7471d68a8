"""Helpers for the frontend tests: real SQLite in tmp_path, a real broker process, real
worker processes (the fixed-answer test double under the real worker runtime), real
gating, and the app built by the factory with those parts (no monkeypatching)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from falcon import testing
from falcon.util.sync import async_to_sync

from mole.frontend.analytics import Analytics
from mole.frontend.app import Components, create_app
from mole.frontend.dispatch import BrokerDispatcher
from mole.frontend.gating_holder import GatingHolder
from mole.frontend.guard import ConnectionGauge, ServerGuard
from mole.frontend.limits import Limits
from mole.frontend.metrics import Metrics
from mole.frontend.passwords import PasswordHasher
from mole.frontend.settings import Settings
from mole.frontend.tokens import TokenService
from mole.frontend.users import UserStore
from tests.support.procs import free_port, must_wait

REPO = Path(__file__).resolve().parents[2]


def _body(raw: bytes):
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode()  # e.g. /metrics


def call(method: str, url: str, body=None, headers=None, form=False, timeout=30):
    """One real HTTP request: (status, headers, JSON body, or text when not JSON)."""
    data = None
    headers = dict(headers or {})
    if body is not None and form:
        data = urllib.parse.urlencode(body).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, _body(r.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, _body(err.read())


FIXED_WORKER = Path(__file__).resolve().parent / "fixed_worker.py"
SECRET = "test-secret-" + "k" * 40
PASSWORD = "correct horse battery"


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


@contextlib.contextmanager
def child(
    args: list[str], log: Path, env: dict[str, str] | None = None, grace: float = 15.0
) -> Iterator[subprocess.Popen]:
    """A child process, stopped (by its pid) when the block ends: SIGTERM, then SIGKILL
    after ``grace`` seconds."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env or child_env()
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """:func:`tests.support.procs.must_wait` in the argument order the frontend tests use."""
    return must_wait(predicate, what, timeout=timeout, interval=interval)


def make_settings(tmp_path: Path, **changes) -> Settings:
    base = Settings(
        data_dir=tmp_path / "frontend",
        jwt_secret=SECRET,
        argon2_profile="cheap",
        request_timeout_s=10.0,
        broker_probe_timeout_s=1.0,
        user_cache_ttl_s=0.0,
    )
    return base.with_(**changes)


def make_components(
    settings: Settings, *, hasher: PasswordHasher, gating: GatingHolder, broker_url: str
) -> Components:
    return Components(
        settings=settings,
        dispatcher=BrokerDispatcher(broker_url, default_timeout=settings.request_timeout_s),
        gating=gating,
        users=UserStore(settings.users_db, hasher),
        analytics=Analytics(settings.analytics_db, flush_interval_s=0.0),
        tokens=TokenService(
            SECRET, issuer=settings.jwt_issuer, ttl_seconds=settings.jwt_ttl_seconds
        ),
        metrics=Metrics(),
        limits=Limits.from_settings(settings),
    )


class Clock:
    """A clock the test moves by hand (rate-limit windows, token expiry)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Api:
    """A falcon.testing client with helpers for tokens."""

    def __init__(self, components: Components) -> None:
        self.components = components
        self.app = create_app(components)
        self.client = testing.TestClient(self.app)

    def user(self, name: str = "alice", *, admin: bool = False) -> dict[str, str]:
        """Create a user (admin through the store, as `mole users create --admin` does)
        and return its Authorization header from the real token endpoint."""
        if self.components.users.get(name) is None:
            self.components.users.create(name, PASSWORD, admin=admin)
        result = self.client.simulate_post(
            "/api/v1/auth/token",
            body=f"username={name}&password={PASSWORD.replace(' ', '+')}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert result.status_code == 200, result.text
        return {"Authorization": f"Bearer {result.json['access_token']}"}

    def close(self) -> None:
        # on the loop falcon.testing runs every simulated request on (its bus client's)
        async_to_sync(self.components.aclose)


@contextlib.contextmanager
def served(api: Api) -> Iterator[str]:
    """``api``'s app on a real uvicorn server (real sockets, its own event loop in a thread)
    on a free loopback port; yields the base URL. The bus client of the app is made on
    that loop and closed there by the lifespan shut-down when the block ends."""
    import uvicorn

    port = free_port()
    app = ServerGuard(
        api.app,
        max_connections=1000,
        gauge=ConnectionGauge(),
        on_shutdown=api.components.dispatcher.close,
    )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="on", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 20, "uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


@dataclass
class FrontendServer:
    """A running ``python -m mole.frontend``: its URL, its gunicorn master, its log."""

    base: str
    port: int
    process: subprocess.Popen
    log: Path
    data_dir: Path


@contextlib.contextmanager
def frontend_server(
    broker_url: str,
    data_dir: Path,
    log: Path,
    *args: str,
    ready_workers: int = 0,
    drop_env: tuple[str, ...] = (),
    stop_grace: float = 15.0,
    **env: str,
) -> Iterator[FrontendServer]:
    """``python -m mole.frontend`` (gunicorn over uvicorn workers) on a free port, with
    the cheap argon2 profile and a generated secret (``JWT_SECRET_KEY`` and
    ``PROMETHEUS_MULTIPROC_DIR`` are not inherited, nor variables starting with a prefix in
    ``drop_env``); extra flags in ``args``, variables in ``env``.

    Ready once it answers /api/v1/health; with ``ready_workers``, once that many worker
    processes have logged loading gating and /api/v1/health/ready answers 200 (a probe
    reaches one worker process only, so the log is what shows every one is up). Stopped
    with SIGTERM, then SIGKILL after ``stop_grace`` seconds.
    """
    import sys

    port = free_port()
    environment = child_env()
    for key in list(environment):
        if key in ("JWT_SECRET_KEY", "PROMETHEUS_MULTIPROC_DIR") or (
            drop_env and key.startswith(drop_env)
        ):
            del environment[key]
    environment.update(MOLE_ARGON2_PROFILE="cheap", **env)
    argv = [
        *("-m", "mole.frontend", "--bind", f"127.0.0.1:{port}", "--broker", broker_url),
        *("--data-dir", str(data_dir), *args),
    ]
    with child([sys.executable, *argv], log, env=environment, grace=stop_grace) as proc:
        server = FrontendServer(f"http://127.0.0.1:{port}", port, proc, log, data_dir)

        def up() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")
            if not ready_workers:
                return call("GET", f"{server.base}/api/v1/health", timeout=5)[0] == 200
            loaded = log.read_text(errors="replace").count("gating loaded in")
            return (
                loaded >= ready_workers
                and call("GET", f"{server.base}/api/v1/health/ready", timeout=5)[0] == 200
            )

        if ready_workers:
            wait_for(up, 120, f"the frontend's {ready_workers} workers to be ready", 0.3)
        else:
            wait_for(up, 60, "the frontend to answer", interval=0.2)
        yield server


@contextlib.contextmanager
def frontend_process(
    broker_url: str, data_dir: Path, log: Path, *args: str, **env: str
) -> Iterator[str]:
    """:func:`frontend_server` with the defaults; yields the base URL once it answers
    /api/v1/health."""
    with frontend_server(broker_url, data_dir, log, *args, **env) as server:
        yield server.base
