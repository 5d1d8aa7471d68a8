"""``mole up``: the whole system on one machine, for a newcomer or a laptop.

Starts the broker, one worker per base model of the registry and the frontend, on tiny
offline models generated on first run (their predictions mean nothing; ``--real`` uses the
registry's HF models instead). The bus runs under CURVE with keys made once in the data
directory, so no other local process can pose as a worker or send requests. It refuses
ports already in use, prints what runs where and its progress, writes where it runs to
``<data dir>/stack.json`` for the other commands, restarts any part that dies (with
back-off) and, on Ctrl-C, SIGTERM or ``mole down``, stops the parts in order: frontend,
then workers (which drain), then the broker. With ``--monolithic`` only the frontend runs,
with gating and the resident-model pool inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mole.cli.stack_keys import StackKeys, ensure_stack_keys
from mole.cli.stack_state import (
    StackState,
    default_data_dir,
    read_state,
    remove_state,
    write_state,
)
from mole.cli.supervisor import CONFIG_ERROR_EXIT, Child, RestartPolicy, Supervisor

TINY_DONE_MARKER = ".mole-tiny-complete"
#: tiers of the staged shutdown: the highest stops first
FRONTEND_TIER, WORKER_TIER, BROKER_TIER = 2, 1, 0
WORKER_DRAIN_TIMEOUT_S = 20.0
#: The broker's drain timeout (``--drain-timeout``): on SIGTERM it serves what is queued
#: or in flight this long at most.
BROKER_DRAIN_TIMEOUT_S = 10.0
#: Seconds the supervisor waits beyond a child's own drain timeout before SIGKILL: time to
#: send the last answers, DISCONNECT and close after the drain ends.
SHUTDOWN_MARGIN_S = 5.0

__all__ = ["configure", "default_data_dir", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where tiny models, keys, logs and frontend state live "
        "(default: MOLE_DATA_DIR or ~/.cache/mole)",
    )
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated base_model_keys to start workers for "
        "(default: every base model in the registry)",
    )
    parser.add_argument(
        "--registry",
        default=None,
        help="experts registry file (default: EXPERT_REGISTRY_PATH or the packaged "
        "configs/experts_registry.json)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the broker and the frontend bind (default 127.0.0.1)",
    )
    parser.add_argument(
        "--broker-port", type=int, default=5555, help="the broker's TCP port (default 5555)"
    )
    parser.add_argument(
        "--http-port", type=int, default=8000, help="the frontend's HTTP port (default 8000)"
    )
    parser.add_argument(
        "--frontend-workers",
        type=int,
        default=2,
        help="gunicorn worker processes of the frontend (default 2)",
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="load the registry's real HF models (needs them in the local HF "
        "cache or MOLE_MODELS_DIR, and a GPU to be useful; default: tiny models)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="use base models from this directory (by key) instead of generating tiny ones",
    )
    parser.add_argument(
        "--adapters-dir",
        type=Path,
        default=None,
        help="adapters root for --models-dir (default: its sibling adapters/)",
    )
    parser.add_argument(
        "--monolithic",
        action="store_true",
        help="single process: gating and models inside the frontend, no broker "
        "(default: distributed)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up when the stack is not ready after this long (default 600)",
    )


def _log(message: str) -> None:
    print(f"[mole up] {message}", flush=True)


class StartRefused(Exception):
    """``mole up`` cannot start as asked; the message says why and what to do."""


def ports_in_use(host: str, ports: dict[str, int]) -> list[str]:
    """``"PORT (what)"`` for each port some process already listens on at ``host``."""
    busy = []
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for what, port in ports.items():
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # as the broker and gunicorn bind: a port in TIME_WAIT is free for them too
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                busy.append(f"{port} ({what})")
    return busy


def ensure_tiny_models(data_dir: Path) -> Path:
    """Generate the tiny models once into ``data_dir/tiny``; later runs reuse them."""
    out = data_dir / "tiny"
    if (out / TINY_DONE_MARKER).exists():
        _log(f"tiny models: reusing {out}")
        return out
    _log(f"tiny models: generating into {out} (first run only; predictions mean nothing)")
    started = time.monotonic()
    # its output (one line per model and adapter) is the progress the user sees
    subprocess.run([sys.executable, "-m", "mole", "models", "tiny", "--out", str(out)], check=True)
    (out / TINY_DONE_MARKER).write_text(json.dumps({"generated_at": time.time()}))
    _log(f"tiny models: ready in {time.monotonic() - started:.1f} s")
    return out


def local_admin(data_dir: Path) -> dict[str, str]:
    """The local stack's admin credentials, created once and kept (mode 0600)."""
    path = data_dir / "local-admin.json"
    if path.exists():
        creds: dict[str, str] = json.loads(path.read_text())
        return creds
    creds = {"username": "mole-admin", "password": secrets.token_urlsafe(18)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
    return creds


def _http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _registered(broker_url: str, keys: StackKeys | None) -> set[str] | None:
    """The services with a live worker, or None when the broker does not answer."""
    from mole.protocol.client import Client
    from mole.protocol.curve import CurveKeys

    curve = None
    if keys is not None:
        curve = CurveKeys.from_files(keys.broker_public, keys.secret("operator"))
    try:
        with Client(broker_url, timeout=2.0, curve=curve) as client:
            status: dict[str, Any] = client.status(timeout=2.0)
    except Exception:  # not up yet (or restarting): asked again on the next turn
        return None
    return {name for name, svc in status.get("services", {}).items() if svc.get("workers")}


def _check_can_start(args: argparse.Namespace, data_dir: Path) -> None:
    running = read_state(data_dir)
    if running is not None:
        raise StartRefused(
            f"a stack from {data_dir} is already running (mole up pid {running.pid}, "
            f"{running.url}); stop it with `mole down`, or pass another --data-dir"
        )
    ports = {"HTTP, --http-port": args.http_port}
    if not args.monolithic:
        ports = {"broker, --broker-port": args.broker_port, **ports}
    busy = ports_in_use(args.host, ports)
    if busy:
        raise StartRefused(
            f"port {' and '.join(busy)} on {args.host} is already in use by another "
            "process; stop it or choose a free port with the flag named"
        )


class Progress:
    """Says how far the start (or a recovery) got, once per change."""

    def __init__(self, services: list[str]) -> None:
        self.services = services
        self._last = ""

    def report(self, ready: set[str], frontend_ready: bool) -> None:
        done = [s for s in self.services if s in ready]
        waiting = [s for s in self.services if s not in ready]
        parts = []
        if self.services:
            line = f"{len(done)}/{len(self.services)} workers ready"
            if waiting:
                shown = ", ".join(waiting[:3]) + (", ..." if len(waiting) > 3 else "")
                line += f" (waiting for {shown})"
            parts.append(line)
        parts.append("frontend ready" if frontend_ready else "frontend starting")
        text = "; ".join(parts)
        if text != self._last:
            self._last = text
            _log(text)


def run(args: argparse.Namespace) -> int:
    from mole.protocol.registry import load_registry, registry_path_from_env

    data_dir = (args.data_dir or default_data_dir()).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    registry_path = Path(args.registry) if args.registry else registry_path_from_env()
    registry = load_registry(registry_path)
    keys_wanted = [k.strip() for k in args.models.split(",") if k.strip()]
    model_keys = keys_wanted or list(registry.base_models)
    unknown = [k for k in model_keys if k not in registry.base_models]
    if unknown:
        print(
            f"mole up: unknown base model(s) {', '.join(unknown)}; the registry has: "
            f"{', '.join(registry.base_models)}",
            file=sys.stderr,
        )
        return 2
    try:
        _check_can_start(args, data_dir)
    except StartRefused as err:
        print(f"mole up: {err}", file=sys.stderr)
        return 1

    env = {
        "MOLE_DATA_DIR": str(data_dir),
        "EXPERT_REGISTRY_PATH": str(registry_path.resolve()),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    if args.models_dir is not None:
        adapters = args.adapters_dir or args.models_dir.parent / "adapters"
        env["MOLE_MODELS_DIR"] = str(args.models_dir.resolve())
        env["MOLE_ADAPTERS_DIR"] = str(adapters.resolve())
    elif not args.real:
        tiny = ensure_tiny_models(data_dir)
        env["MOLE_MODELS_DIR"] = str(tiny / "models")
        env["MOLE_ADAPTERS_DIR"] = str(tiny / "adapters")
    creds = local_admin(data_dir)
    env["MOLE_BOOTSTRAP_ADMIN"] = f"{creds['username']}:{creds['password']}"
    keys: StackKeys | None = None
    if not args.monolithic:
        keys, made = ensure_stack_keys(data_dir)
        if made:
            _log(f"CURVE keys: made {', '.join(made)} in {keys.directory} (mode 0600)")
        else:
            _log(f"CURVE keys: reusing {keys.directory}")

    broker_url = f"tcp://{args.host}:{args.broker_port}"
    http_url = f"http://{args.host}:{args.http_port}"
    supervisor = Supervisor(data_dir / "logs")
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    python = [sys.executable, "-m", "mole"]
    started = time.monotonic()
    state = StackState(
        pid=os.getpid(),
        url=http_url,
        http_port=args.http_port,
        host=args.host,
        data_dir=str(data_dir),
        log_dir=str(supervisor.log_dir),
        started_at=time.time(),
        monolithic=args.monolithic,
        broker_url=None if args.monolithic else broker_url,
        broker_port=None if args.monolithic else args.broker_port,
        keys_dir=str(keys.directory) if keys else None,
    )
    try:
        if args.monolithic:
            env["SERVICE_MODE"] = "monolithic"
        else:
            assert keys is not None
            for spec in bus_children(python, broker_url, model_keys, env, keys):
                supervisor.start(
                    spec.name,
                    spec.argv,
                    spec.env,
                    restart=spec.restart,
                    tier=spec.tier,
                    grace=spec.grace,
                )
        supervisor.start(
            "frontend",
            [
                *python,
                "frontend",
                "--bind",
                f"{args.host}:{args.http_port}",
                "--broker",
                broker_url,
                "--workers",
                str(args.frontend_workers),
            ],
            {**env, **(keys.peer_env("frontend") if keys else {})},
            restart="always",
            tier=FRONTEND_TIER,
            grace=35.0,
        )
        _record(state, supervisor)
        _print_table(supervisor, broker_url, http_url, data_dir, args.monolithic)
        return _watch(args, supervisor, state, keys, model_keys, creds, started, lambda: stopping)
    finally:
        _log("stopping: frontend, then workers (draining), then broker")
        supervisor.stop_all()
        remove_state(data_dir, os.getpid())
        _log("all processes stopped")


@dataclass(frozen=True)
class ChildSpec:
    """How the supervisor starts and stops one child of the stack."""

    name: str
    argv: list[str]
    env: dict[str, str]
    restart: RestartPolicy
    tier: int
    grace: float


def bus_children(
    python: list[str],
    broker_url: str,
    model_keys: list[str],
    env: dict[str, str],
    keys: StackKeys,
) -> list[ChildSpec]:
    """The broker and one worker per base model, each with the drain timeout it is given
    and a supervisor grace longer than it (else SIGKILL would cut its drain short)."""
    specs = [
        ChildSpec(
            "broker",
            [
                *python,
                "broker",
                "--bind",
                broker_url,
                "--drain-timeout",
                str(BROKER_DRAIN_TIMEOUT_S),
            ],
            {**env, **keys.broker_env()},
            "always",
            BROKER_TIER,
            BROKER_DRAIN_TIMEOUT_S + SHUTDOWN_MARGIN_S,
        )
    ]
    for key in model_keys:
        specs.append(
            ChildSpec(
                f"worker-{key}",
                [
                    *python,
                    "worker",
                    "--model-key",
                    key,
                    "--broker",
                    broker_url,
                    "--drain-timeout",
                    str(WORKER_DRAIN_TIMEOUT_S),
                ],
                {**env, **keys.peer_env("worker")},
                "on-failure",
                WORKER_TIER,
                WORKER_DRAIN_TIMEOUT_S + SHUTDOWN_MARGIN_S,
            )
        )
    return specs


def _record(state: StackState, supervisor: Supervisor) -> None:
    state.processes = {c.name: c.pid for c in supervisor.children if c.pid is not None}
    write_state(state)


def _watch(
    args: argparse.Namespace,
    supervisor: Supervisor,
    state: StackState,
    keys: StackKeys | None,
    model_keys: list[str],
    creds: dict[str, str],
    started: float,
    stopping: Any,
) -> int:
    """Supervise until asked to stop: start-up progress, restarts, recovery."""
    http_url = state.url
    services = [] if args.monolithic else list(model_keys)
    progress = Progress(services)
    deadline = time.monotonic() + args.ready_timeout
    announced = False
    recovering_since: float | None = None
    while not stopping():
        for event in supervisor.check():
            child: Child = event.child
            if event.kind == "restarted":
                _log(f"{child.name} restarted (pid {child.pid}, restart {child.restarts})")
                _record(state, supervisor)
                continue
            if event.restart_in is None:
                _log(f"{child.name} exited with {event.code}; not restarted (see {child.log_path})")
                if event.code == CONFIG_ERROR_EXIT:
                    for line in _tail(child.log_path, 5):
                        _log(f"  {child.name} | {line}")
                    if not announced or child.tier != WORKER_TIER:
                        return 1  # the stack cannot become whole: say so now, not later
                if not any(c.alive() or c.next_start is not None for c in supervisor.children):
                    return 1
                continue
            _log(
                f"{child.name} exited ({event.code}); restarting in {event.restart_in:.1f} s "
                f"(see {child.log_path})"
            )
            if announced and child.name == "broker":
                recovering_since = time.monotonic()
                progress = Progress(services)
        pending = [c.next_start for c in supervisor.children if c.next_start is not None]
        if pending:  # a restart is due soon: start it on time, probe once it runs
            time.sleep(min(0.5, max(0.0, min(pending) - time.monotonic())))
            continue
        if not announced or recovering_since is not None:
            ready = set() if not services else (_registered(state.broker_url or "", keys) or set())
            frontend_ready = _http_ready(f"{http_url}/api/v1/health/ready")
            progress.report(ready, frontend_ready)
            if all(s in ready for s in services) and frontend_ready:
                if not announced:
                    announced = True
                    _log(
                        f"ready in {time.monotonic() - started:.1f} s: {http_url} "
                        f"(admin user {creds['username']}, password in "
                        f"{Path(state.data_dir) / 'local-admin.json'})"
                    )
                elif recovering_since is not None:
                    _log(
                        f"serving again {time.monotonic() - recovering_since:.1f} s after "
                        "the broker restarted: every worker registered"
                    )
                    recovering_since = None
            elif not announced and time.monotonic() > deadline:
                missing = [s for s in services if s not in ready] or ["frontend"]
                _log(
                    f"not ready after {args.ready_timeout:.0f} s; waiting for: "
                    f"{', '.join(missing)}; logs in {supervisor.log_dir} (`mole logs`)"
                )
                return 1
        # supervising only is cheap: look often, so a dead part is restarted at once
        time.sleep(0.2 if announced and recovering_since is None else 0.5)
    return 0


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _print_table(
    supervisor: Supervisor, broker_url: str, http_url: str, data_dir: Path, monolithic: bool
) -> None:
    _log(f"data directory {data_dir} (state in {data_dir / 'stack.json'})")
    if not monolithic:
        _log(f"broker    {broker_url}  (CURVE, keys in {data_dir / 'keys'})")
    _log(f"frontend  {http_url}  (API docs: {http_url}/api/v1/openapi.json)")
    for child in supervisor.children:
        _log(f"  {child.name:<50} pid {child.pid}  log {child.log_path}")
