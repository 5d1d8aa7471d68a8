"""The engine's knobs, with the environment variables that set them.

Flags of ``mole worker`` override the environment, which overrides these defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


@dataclass(slots=True)
class EngineSettings:
    """How to load and run one base model."""

    #: MOLE_MODELS_DIR: local copies of base models by key (``<dir>/<base_model_key>/``)
    models_dir: Path | None = field(default_factory=lambda: _env_path("MOLE_MODELS_DIR"))
    #: MOLE_ADAPTERS_DIR: root of adapter directories (``<dir>/<adapter_path>/``)
    adapters_dir: Path | None = field(default_factory=lambda: _env_path("MOLE_ADAPTERS_DIR"))
    #: "auto" (CUDA when present), "cpu" or "cuda[:n]"; MOLE_DEVICE
    device: str = field(default_factory=lambda: os.environ.get("MOLE_DEVICE", "auto"))
    #: load in 4-bit nf4 even on CPU (tests); MOLE_FORCE_4BIT
    force_4bit: bool = field(default_factory=lambda: _env_bool("MOLE_FORCE_4BIT"))
    #: keep a float16 dtype on CPU instead of switching to float32; MOLE_KEEP_DTYPE
    keep_dtype: bool = field(default_factory=lambda: _env_bool("MOLE_KEEP_DTYPE"))
    #: prompt limit in tokens (template + input); MOLE_MAX_INPUT_TOKENS
    max_input_tokens: int = field(
        default_factory=lambda: int(os.environ.get("MOLE_MAX_INPUT_TOKENS", "1024"))
    )
    #: largest batch run in one forward pass; MOLE_MAX_BATCH
    max_batch: int = field(default_factory=lambda: int(os.environ.get("MOLE_MAX_BATCH", "16")))
    #: how long the first request of a batch waits for company; MOLE_BATCH_WAIT_MS
    batch_wait_ms: float = field(
        default_factory=lambda: float(os.environ.get("MOLE_BATCH_WAIT_MS", "5"))
    )
    #: CPU threads for torch (0: leave torch's default); MOLE_TORCH_THREADS
    torch_threads: int = field(
        default_factory=lambda: int(os.environ.get("MOLE_TORCH_THREADS", "0"))
    )
    #: compute each template's instruction prefix once per adapter and reuse its cache;
    #: MOLE_PREFIX_CACHE=0 turns it off
    prefix_cache: bool = field(
        default_factory=lambda: os.environ.get("MOLE_PREFIX_CACHE", "1").strip() != "0"
    )
    #: run one request per task before registering
    warmup: bool = True
