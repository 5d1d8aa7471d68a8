"""Build an expensive test artefact once per test run, also under pytest-xdist.

A session-scoped fixture runs once per pytest *process*; with ``pytest -n N`` that is once
per xdist worker, and the tiny models on real tokenizers (tens of seconds of CPU) would be
generated N times on the same two cores. :func:`built_once` builds into a folder that every
worker of the run shares (the parent of each worker's base temp directory, as pytest-xdist
documents for this purpose), under an exclusive file lock: the first worker builds, the
others wait and reuse it. Without xdist it is simply a fresh temp folder.

Tests must treat what it returns as read-only (they already must: a session fixture is
shared by every test of the process).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

_DONE = ".built"


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]
) -> Path:
    """The folder ``name`` after ``build(folder)`` has filled it, once for the whole run."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent  # one per run, common to every worker
    folder = shared / f"once-{name}"
    with open(shared / f"once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (folder / _DONE).is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a build that died half way
            folder.mkdir()
            build(folder)
            (folder / _DONE).touch()
    return folder
