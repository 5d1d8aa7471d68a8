"""Write tiny models in the formats real weights come in (helpers for test_checkpoints)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def save_as_hub_ships_it(
    source: Path, dest: Path, *, quantize_4bit: bool = False, shard: str = "4MB"
) -> Path:
    """``source`` re-saved as sharded safetensors + index, generation_config.json and the
    tokenizer's files; with ``quantize_4bit`` already quantised to nf4 by bitsandbytes
    (``quantization_config`` in config.json), the format of ``unsloth/*-bnb-4bit``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if quantize_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        kwargs["device_map"] = "cpu"
    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, **kwargs)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, max_shard_size=shard)
    model.generation_config.save_pretrained(dest)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(dest)
    return dest


def hf_cache_snapshot_dir(cache: Path, repo_id: str, revision: str = "0123456789abcdef") -> Path:
    """``cache/models--org--name/snapshots/<revision>/`` with ``refs/main`` pointing at it,
    as huggingface_hub lays a download out (files in place of its blob symlinks)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def copy_tree(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, dirs_exist_ok=True)
    return dest
