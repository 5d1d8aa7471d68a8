"""Shared test settings: offline Hugging Face, and the session's tiny models.

The repository root is on ``sys.path`` through ``pythonpath`` in pyproject.toml, so test
modules import their helpers as ``tests.<part>.<module>``; the project itself is imported
as ``mole`` (installed, editable).
"""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---- tiny models (worker engine) -------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random-weight models and adapters for every registry base model, generated once
    per test session (a few seconds). Yields the directory holding ``models/`` and
    ``adapters/``: point MOLE_MODELS_DIR / MOLE_ADAPTERS_DIR at them."""
    from mole.worker.tiny import generate

    out = tmp_path_factory.mktemp("tiny")
    generate(out)
    return out
