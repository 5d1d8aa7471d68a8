"""Deployment files cannot be built here (no Docker engine, no systemd), so check what can
be checked: they parse, every path they copy exists, and every ``mole`` command line they
hold names a real subcommand with flags that subcommand accepts, and every setting they
pass is one the code reads."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _mole_help(subcommand: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "mole", subcommand, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, f"mole {subcommand} --help failed: {out.stderr}"
    return out.stdout


def _check_command(argv: list[str]) -> None:
    assert Path(argv[0]).name == "mole", argv
    subcommand = argv[1]
    help_text = _mole_help(subcommand)
    for arg in argv[2:]:
        if arg.startswith("--"):
            assert arg.split("=")[0] in help_text, f"mole {subcommand} has no flag {arg}"


def _setting_is_read(name: str) -> bool:
    """True when some Python file of the project mentions the environment variable."""
    for package in ("protocol", "broker", "worker", "gating", "frontend", "mole"):
        for path in (ROOT / package).rglob("*.py"):
            if name in path.read_text(encoding="utf-8"):
                return True
    return name.startswith(("HF_", "CUDA_", "PYTHON", "PATH"))


def test_dockerfile_copies_existing_paths_and_runs_unprivileged():
    text = (DEPLOY / "Dockerfile").read_text()
    for source in re.findall(r"^COPY\s+(\S+)", text, re.M):
        assert (ROOT / source).exists(), f"Dockerfile copies missing path {source}"
    assert re.search(r"^USER\s+(?!root)\w+", text, re.M), "the image must not run as root"


@pytest.mark.parametrize("name", ["compose.coordinator.yml", "compose.worker.yml"])
def test_compose_files_parse_and_name_real_commands_and_settings(name):
    doc = yaml.safe_load((DEPLOY / name).read_text())
    assert doc["services"], f"{name} defines no service"
    for service in doc["services"].values():
        _check_command(service["command"])
        for variable in service.get("environment", {}):
            assert _setting_is_read(variable), f"{name}: {variable} is read by no code"


@pytest.mark.parametrize("unit", sorted(p.name for p in (DEPLOY / "systemd").glob("*.service")))
def test_systemd_units_parse_and_name_real_commands(unit):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(DEPLOY / "systemd" / unit)
    exec_start = parser["Service"]["ExecStart"]
    _check_command(shlex.split(exec_start))
    for line in (DEPLOY / "systemd" / unit).read_text().splitlines():
        if line.startswith("Environment="):
            variable = line.split("=", 2)[1]
            assert _setting_is_read(variable), f"{unit}: {variable} is read by no code"
