"""``mole frontend`` / ``python -m frontend``: check the settings, then run gunicorn
(the process manager) over uvicorn workers (``frontend.server``).

Before gunicorn starts (so before any fork) the launcher refuses unsafe settings with a
clear message (weak JWT secret, bad numbers), creates the generated JWT secret once so
every worker reads the same one, applies ``MOLE_BOOTSTRAP_ADMIN``, and creates and
empties ``PROMETHEUS_MULTIPROC_DIR``. It then replaces itself with the gunicorn master
(``exec``), so SIGTERM from a supervisor reaches gunicorn directly (graceful shutdown).
Nothing it opens survives into the workers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from mole.frontend.settings import SettingsError, resolve_secret, settings_from_env


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bind",
        default=os.environ.get("MOLE_FRONTEND_BIND", "127.0.0.1:8000"),
        help="host:port to listen on (default 127.0.0.1:8000)",
    )
    parser.add_argument(
        "--broker",
        default=None,
        help="broker URL (default MOLE_BROKER_URL or tcp://127.0.0.1:5555)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("MOLE_FRONTEND_WORKERS", "2")),
        help="gunicorn worker processes (default 2)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open connections per worker process before new requests get a 503 "
        "(default MOLE_MAX_CONNECTIONS or 4096)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="state directory (default MOLE_DATA_DIR or ~/.cache/mole); the "
        "frontend keeps users, analytics and its secret in <dir>/frontend",
    )
    parser.add_argument("--access-log", action="store_true", help="log each request (no bodies)")


def prepare(args: argparse.Namespace, env: dict[str, str]) -> dict[str, str]:
    """Validate settings and prepare shared state; returns the environment for gunicorn.

    Raises:
        SettingsError: a setting is unsafe or malformed (the message says what to do).
    """
    if args.data_dir is not None:
        env["MOLE_DATA_DIR"] = str(args.data_dir.resolve())
    if args.broker:
        env["MOLE_BROKER_URL"] = args.broker
    if args.workers < 1:
        raise SettingsError("--workers must be at least 1")
    if args.max_connections is not None:
        if args.max_connections < 1:
            raise SettingsError("--max-connections must be at least 1")
        env["MOLE_MAX_CONNECTIONS"] = str(args.max_connections)
    settings = settings_from_env(env)
    if settings.service_mode == "monolithic" and args.workers > 1:
        # Each gunicorn worker process would hold its own copy of every resident model.
        print(
            f"mole frontend: SERVICE_MODE=monolithic runs one worker process (not "
            f"{args.workers}) so the models are loaded once",
            file=sys.stderr,
        )
        args.workers = 1
    resolve_secret(settings)  # refuses a weak secret; creates the generated one once
    if settings.bootstrap_admin:
        from mole.frontend.passwords import PasswordHasher
        from mole.frontend.users import UserError, UserStore, bootstrap_admin

        store = UserStore(settings.users_db, PasswordHasher(settings.argon2_profile))
        try:
            bootstrap_admin(store, settings.bootstrap_admin)
        except UserError as err:
            raise SettingsError(f"MOLE_BOOTSTRAP_ADMIN: {err}") from None
        finally:
            store.close()  # nothing SQLite crosses the fork
    metrics_dir = Path(env.get("PROMETHEUS_MULTIPROC_DIR") or settings.data_dir / "prometheus")
    if metrics_dir.exists():
        shutil.rmtree(metrics_dir)
    metrics_dir.mkdir(parents=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    env["MOLE_FRONTEND_BIND"] = args.bind
    env["MOLE_FRONTEND_WORKERS"] = str(args.workers)
    if args.access_log:
        env["MOLE_FRONTEND_ACCESS_LOG"] = "-"
    return env


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    try:
        env = prepare(args, env)
    except SettingsError as err:
        print(f"mole frontend: {err}", file=sys.stderr)
        return 2
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:mole.frontend.gunicorn_conf",
        "mole.frontend.asgi:app",
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)  # replaces this process: never returns
