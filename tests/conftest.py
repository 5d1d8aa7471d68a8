"""Shared test settings: offline Hugging Face, and the repository root on sys.path."""

import os
import sys
from pathlib import Path

# NOTE: pytest puts tests/ on sys.path, and tests/protocol, tests/broker, tests/worker,
# tests/gating and tests/frontend have no __init__.py: Python would import them as empty
# namespace packages in place of the real ones (the editable install's import hook runs
# after the path search). The repository root goes first, once, for every test directory,
# and any shadow imported before this file is forgotten.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT in sys.path:
    sys.path.remove(ROOT)
sys.path.insert(0, ROOT)
for _name in ("protocol", "broker", "worker", "gating", "frontend"):
    _module = sys.modules.get(_name)
    if _module is not None and getattr(_module, "__file__", None) is None:
        del sys.modules[_name]

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
