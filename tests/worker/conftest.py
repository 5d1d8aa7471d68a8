"""Worker tests share the session ``tiny_models`` fixture of tests/conftest.py, and add
tiny models built on the served families' real tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.once import built_once


@pytest.fixture(scope="session")
def real_tokenizer_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random models of every registry base model, each on its family's real tokenizer
    where a package ships one (llama2, mistral, llama3, qwen2; see realtokenizers.py), with
    trained LoRA adapters. Narrow (64 hidden) so 32k-152k vocabularies stay small; built
    once per session (about 40 s here)."""
    from mole.worker.tiny import generate
    from tests.worker.realtokenizers import real_tokenizers

    return built_once(
        tmp_path_factory,
        "real_tokenizers",
        lambda out: generate(out, size="narrow", tokenizers=real_tokenizers()),
    )
