"""Deployment files cannot be built here (no Docker engine, no systemd), so check what can
be checked: they parse, every path they copy exists, every ``mole`` command line they
hold names a real subcommand with flags that subcommand accepts, every setting they pass
is one the code reads, and the Dockerfile's three images install the wheel with the extra
their role needs (the broker's with none, so no torch)."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.support.procs import ROOT

DEPLOY = ROOT / "deploy"
ROLES = {"broker": None, "frontend": "frontend", "worker": "worker"}  # target -> extra


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


@dataclass
class Stage:
    """One ``FROM ... AS name`` stage of a Dockerfile: its base and its instructions."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def dockerfile_stages() -> dict[str, Stage]:
    """The Dockerfile's stages by name, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    logical = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    )
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical.splitlines():
        if not line.strip():
            continue
        keyword, _, arg = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", arg.strip(), re.I)
            assert match, f"every stage is named: FROM {arg}"
            current = Stage(match.group(2), match.group(1))
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, arg.strip()))
    return stages


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and every stage it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"": project["dependencies"], **project["optional-dependencies"]}


def test_dockerfile_copies_existing_paths_and_builds_a_wheel() -> None:
    stages = dockerfile_stages()
    for stage in stages.values():
        for copy in stage.all("COPY"):
            if copy.startswith("--from"):
                continue
            for source in copy.split()[:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing path {source}"
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    copied = {copy.split()[0] for copy in stages["wheel"].all("COPY")}
    assert set(package_dirs.values()) <= copied, "the wheel stage misses a package folder"
    assert any("pip wheel" in run for run in stages["wheel"].all("RUN"))
    text = (DEPLOY / "Dockerfile").read_text()
    assert not re.search(r"pip install[^\n]*\s-e\s", text), "images install the wheel, not editable"


@pytest.mark.parametrize("target", sorted(ROLES))
def test_each_image_installs_the_wheel_with_its_extra_and_runs_unprivileged(target: str) -> None:
    stages = dockerfile_stages()
    assert target in stages, f"no --target {target}"
    chain = lineage(stages, target)
    installs = [run for stage in chain for run in stage.all("RUN") if "pip install" in run]
    assert len(installs) == 1, installs
    (install,) = installs
    assert "from=wheel" in install
    assert "mole_framework-*.whl" in install
    named = re.findall(r"\.whl\)?\[([a-z,]+)\]", install)
    expected = ROLES[target]
    assert named == ([expected] if expected else []), install
    users = [user for stage in chain for user in stage.all("USER")]
    assert users, "the image must not run as root"
    assert users[0] != "root", "the image must not run as root"
    (cmd,) = stages[target].all("CMD")
    argv = json.loads(cmd)
    _check_command(argv)
    assert argv[1] == target


def test_broker_image_has_no_torch() -> None:
    stages = dockerfile_stages()
    chain = lineage(stages, "broker")
    assert "worker" not in {stage.name for stage in chain}
    deps = extras()
    installed = " ".join(deps[""])  # the broker installs the wheel with no extra
    assert "torch" not in installed
    assert any(r.startswith("torch") for r in deps["worker"])
    assert "torch" not in " ".join(run for s in chain for run in s.all("RUN"))


@pytest.mark.parametrize("name", ["compose.coordinator.yml", "compose.worker.yml"])
def test_compose_files_parse_and_name_real_commands_and_settings(name: str) -> None:
    doc = yaml.safe_load((DEPLOY / name).read_text())
    assert doc["services"], f"{name} defines no service"
    stages = dockerfile_stages()
    for service in doc["services"].values():
        _check_command(service["command"])
        target = service["build"]["target"]
        assert target in stages, service
        assert target == service["command"][1], service
        assert service["image"].startswith(f"mole-{target}:")
        for variable in service.get("environment", {}):
            assert _setting_is_read(variable), f"{name}: {variable} is read by no code"


@pytest.mark.parametrize("unit", sorted(p.name for p in (DEPLOY / "systemd").glob("*.service")))
def test_systemd_units_parse_and_name_real_commands(unit: str) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(DEPLOY / "systemd" / unit)
    exec_start = parser["Service"]["ExecStart"]
    _check_command(shlex.split(exec_start))
    for line in (DEPLOY / "systemd" / unit).read_text().splitlines():
        if line.startswith("Environment="):
            variable = line.split("=", 2)[1]
            assert _setting_is_read(variable), f"{unit}: {variable} is read by no code"
