"""Gating fixtures: the shipped registry and router, and a tiny random XLM-R built offline.

The tiny XLM-R (2 layers, hidden 32) has a byte-level BPE tokenizer trained here with
`tokenizers` on the router's training descriptions; nothing comes from the hub. Its
predictions mean nothing: tests use it to check formats and arithmetic, not quality.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mole.protocol.registry import load_registry
from tests.gating.gating_samples import SENTENCES


@pytest.fixture(scope="session")
def registry():
    return load_registry()


@pytest.fixture(scope="session")
def pipeline():
    from mole.gating import GatingPipeline

    return GatingPipeline.load()


@pytest.fixture(scope="session")
def detector(pipeline):
    return pipeline.detector


@pytest.fixture(scope="session")
def tiny_xlmr(tmp_path_factory) -> Path:
    """A local tiny random XLM-R directory (config, weights, tokenizer)."""
    from tests.gating.tiny_xlmr import build_tiny_xlmr

    return build_tiny_xlmr(tmp_path_factory.mktemp("tiny-xlmr"), extra_texts=SENTENCES.values())
