"""Shared test settings: offline Hugging Face, the session's tiny models, and the test
pyramid's two layers.

The repository root is on ``sys.path`` through ``pythonpath`` in pyproject.toml, so test
modules import their helpers as ``tests.<part>.<module>``; the project itself is imported
as ``mole`` (installed, editable).

Layers: every collected test is marked ``unit`` or ``process`` here, by the rule written
in :mod:`tests.support.pyramid` (``process`` when the code the test and its fixtures name
can start a process). A test that uses a fixture building or loading transformers models
(``MODEL_FIXTURES``) is also ``slow``. ``scripts/test.sh --fast`` runs
``-m "unit and not slow"``. A ``unit`` test that starts a process anyway fails, saying what
it started.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Generator
from pathlib import Path

import pytest

from tests.support.once import built_once
from tests.support.pyramid import SpawnAnalysis, SpawnWatch, fixture_function

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---- tiny models (worker engine) -------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-weight models and adapters for every registry base model, generated once
    per test session (a few seconds). Yields the directory holding ``models/`` and
    ``adapters/``: point MOLE_MODELS_DIR / MOLE_ADAPTERS_DIR at them."""
    from mole.worker.tiny import generate

    return built_once(tmp_path_factory, "tiny", generate)


# ---- the pyramid: unit vs process --------------------------------------------------------

_SPAWN_WATCH = SpawnWatch()
# Fixtures that build or load transformers models: a test using one is also `slow` (seconds
# of CPU per test on 2 cores), so the fast lane (`unit and not slow`) stays under a minute.
MODEL_FIXTURES = frozenset({"tiny_models", "tiny_xlmr", "real_tokenizer_models", "split_adapters"})


def _fixture_modules(item: pytest.Function, root: Path) -> list[types.ModuleType | type]:
    """Where the item's fixtures can be defined, nearest first: its class, its module, then
    the conftest modules of its folder and every folder above it up to the root."""
    places: list[types.ModuleType | type] = []
    if item.cls is not None:
        places.append(item.cls)
    places.append(item.module)
    folder = item.path.parent
    while folder == root or root in folder.parents:
        dotted = ".".join((*folder.relative_to(root).parts, "conftest"))
        conftest = sys.modules.get(dotted)
        if conftest is not None:
            places.append(conftest)
        if folder == root:
            break
        folder = folder.parent
    return places


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    analysis = SpawnAnalysis()
    root = config.rootpath
    for item in items:
        if not isinstance(item, pytest.Function):
            item.add_marker(pytest.mark.process)
            continue
        places = _fixture_modules(item, root)
        code = [item.function]
        for name in item.fixturenames:
            function = fixture_function(name, places)
            if function is not None:
                code.append(function)
        spawns = any(analysis.spawns(part) for part in code)
        item.add_marker(pytest.mark.process if spawns else pytest.mark.unit)
        if MODEL_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


def _watched(item: pytest.Item) -> Generator[None, object, object]:
    if item.get_closest_marker("unit") is None:
        return (yield)
    _SPAWN_WATCH.start()
    try:
        result = yield
    finally:
        started = _SPAWN_WATCH.stop()
    if started:
        pytest.fail(
            "this test is marked `unit` (see tests/support/pyramid.py) but started a "
            f"process: {started[0]} — make the spawner visible to the rule (name it in the "
            "test or a fixture) so the test is marked `process`",
            pytrace=False,
        )
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _watched(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _watched(item))
