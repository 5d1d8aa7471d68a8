"""Shared test settings: offline Hugging Face, and the repository root on sys.path."""

import os
import sys
from pathlib import Path

# tests/frontend, tests/gating, ... would otherwise shadow the real packages of the same
# name as empty namespace packages when pytest puts tests/ on sys.path.
ROOT = str(Path(__file__).resolve().parent.parent)
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---- tiny models (worker engine) -------------------------------------------------------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random-weight models and adapters for every registry base model, generated once
    per test session (a few seconds). Yields the directory holding ``models/`` and
    ``adapters/``: point MOLE_MODELS_DIR / MOLE_ADAPTERS_DIR at them."""
    from worker.tiny import generate

    out = tmp_path_factory.mktemp("tiny")
    generate(out)
    return out
