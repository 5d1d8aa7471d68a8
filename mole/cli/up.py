"""``mole up``: the whole system on one machine, for a newcomer or a laptop.

Starts the broker, one worker per base model of the registry and the frontend, on tiny
offline models generated on first run (their predictions mean nothing; ``--real`` uses the
registry's HF models instead). Prints what runs where, waits until every part answers, and
stops every child on Ctrl-C or SIGTERM. With ``--monolithic`` only the frontend runs, with
gating and the resident-model pool inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mole.cli.supervisor import Supervisor

TINY_DONE_MARKER = ".mole-tiny-complete"


def default_data_dir() -> Path:
    return Path(os.environ.get("MOLE_DATA_DIR") or Path.home() / ".cache" / "mole")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where tiny models, logs and frontend state live "
        "(default: MOLE_DATA_DIR or ~/.cache/mole)",
    )
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated base_model_keys to start workers for "
        "(default: every base model in the registry)",
    )
    parser.add_argument("--registry", default=None, help="experts registry file")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--broker-port", type=int, default=5555)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--frontend-workers", type=int, default=2)
    parser.add_argument(
        "--real",
        action="store_true",
        help="load the registry's real HF models (needs them in the local HF "
        "cache or MOLE_MODELS_DIR, and a GPU to be useful)",
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
        help="single process: gating and models inside the frontend, no broker",
    )
    parser.add_argument("--ready-timeout", type=float, default=600.0)


def _log(message: str) -> None:
    print(f"[mole up] {message}", flush=True)


def ensure_tiny_models(data_dir: Path) -> Path:
    """Generate the tiny models once into ``data_dir/tiny``; later runs reuse them."""
    out = data_dir / "tiny"
    if (out / TINY_DONE_MARKER).exists():
        _log(f"tiny models: reusing {out}")
        return out
    _log(f"tiny models: generating into {out} (first run only; predictions mean nothing)")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "mole", "models", "tiny", "--out", str(out)], check=True)
    (out / TINY_DONE_MARKER).write_text(json.dumps({"generated_at": time.time()}))
    _log(f"tiny models: ready in {time.monotonic() - started:.1f} s")
    return out


def local_admin(data_dir: Path) -> dict[str, str]:
    """The local stack's admin credentials, created once and kept (mode 0600)."""
    path = data_dir / "local-admin.json"
    if path.exists():
        return json.loads(path.read_text())
    creds = {"username": "mole-admin", "password": secrets.token_urlsafe(18)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
    return creds


def _http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _services_up(broker_url: str, services: list[str]) -> list[str]:
    """The services that have no live worker yet (empty when all are up)."""
    from mole.protocol.client import Client

    try:
        with Client(broker_url, timeout=2.0) as client:
            status = client.status(timeout=2.0)
    except Exception:
        return services
    live = {name for name, svc in status.get("services", {}).items() if svc.get("workers")}
    return [s for s in services if s not in live]


def run(args: argparse.Namespace) -> int:
    from mole.protocol.registry import load_registry, registry_path_from_env

    data_dir = (args.data_dir or default_data_dir()).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    registry_path = Path(args.registry) if args.registry else registry_path_from_env()
    registry = load_registry(registry_path)
    keys = [k.strip() for k in args.models.split(",") if k.strip()] or list(registry.base_models)
    unknown = [k for k in keys if k not in registry.base_models]
    if unknown:
        print(
            f"mole up: unknown base model(s) {', '.join(unknown)}; the registry has: "
            f"{', '.join(registry.base_models)}",
            file=sys.stderr,
        )
        return 2

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

    broker_url = f"tcp://{args.host}:{args.broker_port}"
    http_url = f"http://{args.host}:{args.http_port}"
    supervisor = Supervisor(data_dir / "logs")
    stopping = False

    def request_stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    python = [sys.executable, "-m", "mole"]
    started = time.monotonic()
    try:
        if args.monolithic:
            env["SERVICE_MODE"] = "monolithic"
        else:
            supervisor.start("broker", [*python, "broker", "--bind", broker_url], env)
            for key in keys:
                supervisor.start(
                    f"worker-{key}",
                    [*python, "worker", "--model-key", key, "--broker", broker_url],
                    env,
                    restart=True,
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
            env,
        )
        _print_table(supervisor, broker_url, http_url, data_dir, args.monolithic)

        waiting = [] if args.monolithic else list(keys)
        frontend_ready = False
        deadline = time.monotonic() + args.ready_timeout
        announced = False
        while not stopping:
            for child in supervisor.check():
                code = child.process.returncode if child.process else None
                if child.restart:
                    _log(f"{child.name} exited ({code}); restarted (see {child.log_path})")
                else:
                    _log(f"{child.name} exited with {code}; see {child.log_path}")
                    return 1
            if not announced:
                if waiting:
                    waiting = _services_up(broker_url, waiting)
                if not frontend_ready:
                    frontend_ready = _http_ready(f"{http_url}/api/v1/health/ready")
                if not waiting and frontend_ready:
                    announced = True
                    _log(
                        f"ready in {time.monotonic() - started:.1f} s: {http_url} "
                        f"(admin user {creds['username']}, password in "
                        f"{data_dir / 'local-admin.json'})"
                    )
                elif time.monotonic() > deadline:
                    _log(
                        f"not ready after {args.ready_timeout:.0f} s; waiting for: "
                        f"{', '.join(waiting) or 'frontend'}; logs in {supervisor.log_dir}"
                    )
                    return 1
            time.sleep(0.5)
        _log("stopping")
        return 0
    finally:
        supervisor.stop_all()
        _log("all processes stopped")


def _print_table(
    supervisor: Supervisor, broker_url: str, http_url: str, data_dir: Path, monolithic: bool
) -> None:
    _log(f"data directory {data_dir}")
    if not monolithic:
        _log(f"broker    {broker_url}")
    _log(f"frontend  {http_url}  (API docs: {http_url}/api/v1/openapi.json)")
    for child in supervisor.children:
        _log(f"  {child.name:<50} pid {child.pid}  log {child.log_path}")
