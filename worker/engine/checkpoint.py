"""Where a base model's checkpoint is on disk, and whether it is complete, before loading.

Real weights come as the hub ships them: ``config.json``, one ``model.safetensors`` or
shards listed in ``model.safetensors.index.json``, ``generation_config.json`` and the
tokenizer's files, in a directory of its own or in the Hugging Face cache
(``models--org--name/snapshots/<revision>/``, found without the network). A download cut
short leaves a shard or the tokenizer missing; transformers then fails deep inside with a
message that names neither. This module names the directory and every missing file first.
A checkpoint saved already quantised by bitsandbytes (``quantization_config`` in
``config.json``, as ``unsloth/*-bnb-4bit``) is recognised so the loader neither quantises
it again nor moves it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mole.worker.engine.errors import ModelLoadError

#: any one of these sets of files is a tokenizer transformers can load
TOKENIZER_FILES: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("sentencepiece.bpe.model",),  # XGLM
    ("vocab.json", "merges.txt"),
)
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A complete checkpoint directory and what its config says about quantisation."""

    directory: Path
    quantization: dict[str, Any] | None  # config.json's quantization_config, if saved so

    @property
    def prequantized_4bit(self) -> bool:
        q = self.quantization or {}
        return q.get("quant_method") == "bitsandbytes" and bool(q.get("load_in_4bit"))


def hf_cache_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot directory of ``repo_id`` (its ``main`` revision), offline.

    Read from the cache's documented layout (``models--org--name/refs/main`` holds the
    revision whose files are under ``snapshots/<revision>/``) rather than through
    ``huggingface_hub.snapshot_download``, whose import pulls in the hub's HTTP stack
    (seconds) on a path that must fail fast when the model is not there. Found from
    ``refs/main`` even when files inside it are missing, so an interrupted download is
    reported by its path rather than as "not in the cache".
    """
    from huggingface_hub import constants

    if (
        not repo_id
        or repo_id.count("/") > 1
        or any(part in ("", ".", "..") for part in repo_id.split("/"))
    ):
        return None  # not a hub repository id
    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    try:
        revision = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / revision
    return snapshot if revision and snapshot.is_dir() else None


def _weights_missing(directory: Path) -> list[str]:
    for index_name in WEIGHT_INDEXES:
        index = directory / index_name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                return [f"{index_name} (unreadable: {err})"]
            return sorted(s for s in shards if not (directory / s).is_file())
    if any((directory / name).is_file() for name in SINGLE_WEIGHTS):
        return []
    return ["model.safetensors (or model.safetensors.index.json and its shards)"]


def missing_files(directory: Path) -> list[str]:
    """Files a checkpoint directory lacks: config, weight shards, tokenizer."""
    missing = [] if (directory / "config.json").is_file() else ["config.json"]
    missing += _weights_missing(directory)
    if not any(all((directory / f).is_file() for f in group) for group in TOKENIZER_FILES):
        missing.append("tokenizer.json (or tokenizer.model)")
    return missing


def inspect_checkpoint(key: str, directory: Path) -> Checkpoint:
    """Check a checkpoint directory before loading it.

    Raises:
        ModelLoadError: naming the directory and each missing file.
    """
    missing = missing_files(directory)
    if missing:
        raise ModelLoadError(
            f"base model {key!r}: the checkpoint at {directory} is incomplete, missing "
            f"{', '.join(missing)} (copy or download it again)"
        )
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"base model {key!r}: {directory / 'config.json'}: {err}") from err
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    return Checkpoint(directory, quant if isinstance(quant, dict) else None)
