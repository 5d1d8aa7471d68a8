"""Settings, the JWT secret rules, the launcher's preparation and `mole users`."""

from __future__ import annotations

import argparse
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mole.frontend import cli
from mole.frontend.passwords import PasswordHasher
from mole.frontend.settings import (
    Settings,
    SettingsError,
    check_secret,
    resolve_secret,
    settings_from_env,
)
from mole.frontend.users import UserStore
from tests.frontend.frontend_support import REPO, child_env


def test_the_original_placeholder_secret_is_refused():
    with pytest.raises(SettingsError, match="placeholder"):
        check_secret("your-super-secret-key-change-in-production")


def test_a_short_secret_is_refused_with_advice():
    with pytest.raises(SettingsError, match="at least 32"):
        check_secret("x" * 31)
    assert check_secret("x" * 32) == "x" * 32


def test_generated_secret_is_private_and_stable(tmp_path):
    settings = Settings(data_dir=tmp_path / "fe")
    first = resolve_secret(settings)
    path = tmp_path / "fe" / "jwt_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert resolve_secret(settings) == first
    assert list((tmp_path / "fe").iterdir()) == [path]  # no temporary files left behind


def test_a_secret_file_readable_by_others_is_refused(tmp_path):
    settings = Settings(data_dir=tmp_path)
    resolve_secret(settings)
    (tmp_path / "jwt_secret").chmod(0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        resolve_secret(settings)


def test_settings_from_env():
    s = settings_from_env(
        {
            "MOLE_DATA_DIR": "/srv/mole",
            "MOLE_BROKER_URL": "tcp://b:1",
            "REQUEST_TIMEOUT_SECONDS": "7.5",
            "SERVICE_MODE": "coordinator",
            "MOLE_ALLOW_REGISTRATION": "false",
            "MOLE_BATCH_LIMIT": "10",
        }
    )
    assert s.data_dir == Path("/srv/mole/frontend")
    assert s.broker_url == "tcp://b:1"
    assert s.request_timeout_s == 7.5
    assert s.service_mode == "distributed"
    assert s.allow_registration is False
    assert s.batch_limit == 10
    with pytest.raises(SettingsError, match="REQUEST_TIMEOUT_SECONDS"):
        settings_from_env({"REQUEST_TIMEOUT_SECONDS": "soon"})
    with pytest.raises(SettingsError, match="SERVICE_MODE"):
        settings_from_env({"SERVICE_MODE": "cluster"})


def test_event_loop_and_write_coalescing_reach_uvicorns_options():
    from mole.frontend.server import uvicorn_options

    default = uvicorn_options(settings_from_env({}))
    assert default["loop"] == "auto"
    assert default["http"].coalesce_writes is False
    chosen = uvicorn_options(
        settings_from_env({"MOLE_EVENT_LOOP": "AsyncIO", "MOLE_COALESCE_WRITES": "on"})
    )
    assert chosen["loop"] == "asyncio"
    assert chosen["http"].coalesce_writes is True
    with pytest.raises(SettingsError, match="MOLE_EVENT_LOOP='trio': expected one of auto"):
        settings_from_env({"MOLE_EVENT_LOOP": "trio"})
    with pytest.raises(SettingsError, match="MOLE_COALESCE_WRITES"):
        settings_from_env({"MOLE_COALESCE_WRITES": "sometimes"})


def _args(tmp_path, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(["--data-dir", str(tmp_path)])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_prepare_empties_the_metrics_dir_and_bootstraps_the_admin(tmp_path):
    stale = tmp_path / "frontend" / "prometheus"
    stale.mkdir(parents=True)
    (stale / "counter_123.db").write_bytes(b"old")
    env = cli.prepare(
        _args(tmp_path),
        {"MOLE_BOOTSTRAP_ADMIN": "boss:boss-password", "MOLE_ARGON2_PROFILE": "cheap"},
    )
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(stale)
    assert stale.is_dir()
    assert not any(stale.iterdir())
    store = UserStore(tmp_path / "frontend" / "users.sqlite3", PasswordHasher("cheap"))
    assert store.get("boss").is_admin
    store.close()
    assert (tmp_path / "frontend" / "jwt_secret").exists()


def test_prepare_refuses_a_weak_secret(tmp_path):
    with pytest.raises(SettingsError, match="placeholder"):
        cli.prepare(
            _args(tmp_path), {"JWT_SECRET_KEY": "your-super-secret-key-change-in-production"}
        )


def test_mole_frontend_with_a_weak_secret_exits_with_a_clear_message(tmp_path):
    env = child_env(JWT_SECRET_KEY="short", MOLE_DATA_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "mole.frontend", "--bind", "127.0.0.1:1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "JWT_SECRET_KEY is 5 bytes" in proc.stderr


def test_mole_users_create_admin_and_list(tmp_path):
    env = child_env(MOLE_DATA_DIR=str(tmp_path), MOLE_ARGON2_PROFILE="cheap")
    run = [sys.executable, "-m", "mole", "users"]
    proc = subprocess.run(
        [*run, "create", "root", "--admin", "--password-stdin"],
        cwd=REPO,
        env=env,
        input="root-password\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "created admin root" in proc.stdout
    proc = subprocess.run(
        [*run, "create", "plain", "--password-stdin"],
        cwd=REPO,
        env=env,
        input="plain-password\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [*run, "list"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.splitlines() == ["plain\t-", "root\tadmin"]
    proc = subprocess.run(
        [*run, "create", "x", "--password-stdin"],
        cwd=REPO,
        env=env,
        input="short\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "username: 3 to 50" in proc.stderr
    store = UserStore(tmp_path / "frontend" / "users.sqlite3", PasswordHasher("cheap"))
    assert store.authenticate("root", "root-password").is_admin
    store.close()


def test_monolithic_mode_runs_one_worker_process(tmp_path, capsys):
    env = cli.prepare(_args(tmp_path, workers=4), {"SERVICE_MODE": "monolithic"})
    assert env["MOLE_FRONTEND_WORKERS"] == "1"
    assert "models are loaded once" in capsys.readouterr().err
