"""The built wheel, once per session, and the venvs it is installed into."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.packaging.wheelhouse import (
    borrow_site_packages,
    build_wheel,
    install_wheel,
    link_distributions,
    new_venv,
)
from tests.support.once import built_once

# the core install's third-party dependencies, as pyproject.toml's `dependencies` name them
CORE_DEPENDENCIES = ["pyzmq", "msgpack", "msgspec"]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = built_once(tmp_path_factory, "wheel", build_wheel)
    (built,) = (folder / "wheels").glob("*.whl")
    return built


@pytest.fixture(scope="session")
def core_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel and the core dependencies, nothing else."""
    python = new_venv(tmp_path_factory.mktemp("core") / "venv")
    install_wheel(python, wheel)
    link_distributions(python, CORE_DEPENDENCIES)
    return python


@pytest.fixture(scope="session")
def full_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel, with every third-party package of the test
    interpreter importable after it (frontend, worker: torch, transformers, ...)."""
    python = new_venv(tmp_path_factory.mktemp("full") / "venv")
    install_wheel(python, wheel)
    borrow_site_packages(python)
    return python
