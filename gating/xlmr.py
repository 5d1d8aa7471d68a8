"""Shared XLM-RoBERTa plumbing for the optional neural gating paths (lazy torch import).

Only the domain classifier with several domains and the encoder task router need torch and
transformers; the default gating path imports neither, so this module imports them inside
functions. Everything loads from local directories with ``local_files_only=True``: nothing
here may reach the hub.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from mole.gating.errors import ArtifactError

if TYPE_CHECKING:  # annotations only: the default gating path must not import torch
    from torch import Tensor
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# NOTE: a fast tokenizer called with padding/truncation arguments mutates its Rust-side
# settings, and concurrent calls can fail with "Already borrowed"; tokenising is cheap next
# to the encoder, so one lock serialises it and the forward passes still run in parallel.
_TOKENIZE_LOCK = threading.Lock()


def import_torch() -> tuple[ModuleType, ModuleType]:
    """torch and transformers, or an ArtifactError that says how to get them.

    The modules come back as plain ``ModuleType`` values (a module cannot be named as a
    type), so what callers compute with them is untyped until it lands in an annotated
    name; the signatures here and in the callers say what those values are.
    """
    try:
        import torch
        import transformers
    except ImportError as err:  # pragma: no cover - both are project dependencies
        raise ArtifactError(f"the XLM-R gating path needs torch and transformers ({err})") from err
    return torch, transformers


def find_encoder_dir(*candidates: str | os.PathLike[str] | None) -> Path:
    """The first candidate that is a local model directory (has config.json)."""
    tried = []
    for c in candidates:
        if not c:
            continue
        p = Path(c)
        tried.append(str(p))
        if (p / "config.json").is_file():
            return p
    raise ArtifactError(
        "no local XLM-R encoder directory (a folder with config.json and tokenizer files); "
        f"tried: {', '.join(tried) or 'nothing'}. Pass --encoder DIR; hub downloads are "
        "never attempted"
    )


def load_tokenizer(encoder_dir: Path) -> PreTrainedTokenizerBase:
    _, transformers = import_torch()
    try:
        tokenizer: PreTrainedTokenizerBase = transformers.AutoTokenizer.from_pretrained(
            str(encoder_dir), local_files_only=True
        )
    except Exception as err:  # transformers raises OSError/ValueError variants
        raise ArtifactError(f"cannot load the tokenizer from {encoder_dir}: {err}") from err
    return tokenizer


def load_encoder(encoder_dir: Path, state_dict: dict[str, Tensor] | None = None) -> PreTrainedModel:
    """An XLM-R encoder in eval mode: from ``encoder_dir``, or its config + ``state_dict``."""
    _torch, transformers = import_torch()
    model: PreTrainedModel
    try:
        if state_dict is None:
            model = transformers.AutoModel.from_pretrained(
                str(encoder_dir), local_files_only=True, add_pooling_layer=False
            )
        else:
            config = transformers.AutoConfig.from_pretrained(
                str(encoder_dir), local_files_only=True
            )
            model = transformers.AutoModel.from_config(config, add_pooling_layer=False)
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
            unexpected = [
                k
                for k in unexpected
                if not k.startswith("pooler.") and not k.endswith("position_ids")
            ]
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing or unexpected:
                raise ArtifactError(
                    f"encoder weights do not fit the config in {encoder_dir}: "
                    f"missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
    except ArtifactError:
        raise
    except Exception as err:
        raise ArtifactError(f"cannot load the XLM-R encoder from {encoder_dir}: {err}") from err
    # transformers 5.25 leaves PreTrainedModel.eval (its override of Module.eval) unannotated
    model.eval()  # type: ignore[no-untyped-call]
    return model


def cls_embeddings(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_len: int,
    batch_size: int = 32,
) -> Tensor:
    """CLS (first token) hidden states, float32 [N, H]."""
    torch, _ = import_torch()
    out: list[Tensor] = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            with _TOKENIZE_LOCK:
                enc = tokenizer(
                    texts[i : i + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=max_len,
                    return_tensors="pt",
                )
            hidden = model(**enc).last_hidden_state
            out.append(hidden[:, 0, :].float())
    embeddings: Tensor = torch.cat(out) if out else torch.zeros(0, model.config.hidden_size)
    return embeddings
