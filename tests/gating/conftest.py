"""Gating fixtures: the shipped registry and router, and a tiny random XLM-R built offline.

The tiny XLM-R (2 layers, hidden 32) has a byte-level BPE tokenizer trained here with
`tokenizers` on the router's training descriptions; nothing comes from the hub. Its
predictions mean nothing: tests use it to check formats and arithmetic, not quality.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # gating_samples, po_samples, tiny_xlmr

from gating_samples import DESCRIPTIONS, SENTENCES  # noqa: E402, F401

from protocol.registry import load_registry  # noqa: E402


@pytest.fixture(scope="session")
def registry():
    return load_registry()


@pytest.fixture(scope="session")
def pipeline():
    from gating import GatingPipeline

    return GatingPipeline.load()


@pytest.fixture(scope="session")
def detector(pipeline):
    return pipeline.detector


@pytest.fixture(scope="session")
def tiny_xlmr(tmp_path_factory) -> Path:
    """A local tiny random XLM-R directory (config, weights, tokenizer)."""
    from tiny_xlmr import build_tiny_xlmr

    return build_tiny_xlmr(tmp_path_factory.mktemp("tiny-xlmr"), extra_texts=SENTENCES.values())
