"""Build MoLE's wheel from a copy of the source tree and install it into fresh venvs.

A copy, so the build's ``build/`` and ``*.egg-info`` never land in the checkout and two
builds never share them. The venvs get the wheel through pip; their third-party
dependencies are either a chosen few linked from the test interpreter's installation (the
core venv: the core dependencies only) or every site-packages folder of the test interpreter
(the full venv), added through a ``.pth`` so the test needs no network and no downloads.
Either way ``mole`` itself comes from the wheel, never from the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import distribution
from pathlib import Path

from tests.support.procs import ROOT

# what a wheel is built from: pyproject.toml's package-dir folders and the files it names
SOURCES = (
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "mole",
    "protocol",
    "broker",
    "worker",
    "gating",
    "frontend",
    "configs",
)


def build_wheel(out: Path) -> Path:
    """The project's wheel, built without network (``--no-build-isolation``: the test
    interpreter's setuptools) from a copy of the sources."""
    source = out / "source"
    source.mkdir(parents=True)
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    wheels = out / "wheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = wheels.glob("mole_framework-*.whl")
    return wheel


def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def new_venv(where: Path) -> Path:
    """A fresh venv without pip (the test interpreter's pip installs into it); returns its
    python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    return where / "bin" / "python"


def site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def install_wheel(python: Path, wheel: Path) -> None:
    """``pip install --no-deps WHEEL`` into the venv of ``python`` (its dependencies are
    provided by :func:`link_distributions` or :func:`borrow_site_packages`)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def link_distributions(python: Path, names: list[str]) -> None:
    """Make the named distributions of the test interpreter (code and dist-info, nothing
    else) importable in the venv of ``python``: symlinks in a folder of their own, listed
    in a ``.pth``."""
    deps = python.parent.parent / "linked-deps"
    deps.mkdir()
    for name in names:
        dist = distribution(name)
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            if top == ".." or (deps / top).exists():
                continue
            (deps / top).symlink_to(base / top)
    (site_packages(python) / "linked-deps.pth").write_text(f"{deps}\n")


def borrow_site_packages(python: Path) -> None:
    """Every third-party package of the test interpreter, importable in the venv of
    ``python`` after its own site-packages (so the wheel's ``mole`` wins). Paths listed in
    a ``.pth`` are added as they are: the editable install's finder there is not run."""
    ours = [p for p in sys.path if p.endswith("site-packages")]
    ours.append(sysconfig.get_path("purelib"))
    lines = "\n".join(dict.fromkeys(ours)) + "\n"
    (site_packages(python) / "borrowed-site-packages.pth").write_text(lines)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a process of a wheel venv: no PYTHONPATH (it could lead back to
    the repository), offline Hugging Face."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra)
    return env
