"""Batched generation (PII extraction) with per-row adapters and the registry's settings.

Rows are grouped by generation settings (``max_new_tokens``, ``temperature``, ``top_p``,
``repetition_penalty``); temperature 0 means greedy decoding. Prompts are left-padded so
every row continues from its own last token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: (max_new_tokens, temperature, top_p, repetition_penalty): rows sharing it generate together
SettingsKey = tuple[int, float, float, float]


class GenerativeModel(Protocol):
    """What generation needs of a model: a transformers causal LM or a PeftModel wrapping
    one (both have ``generate``, which ``torch.nn.Module`` alone does not promise)."""

    def generate(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...


@dataclass(slots=True)
class GenRow:
    prompt_ids: list[int]
    adapter: str | None
    generation: dict[str, Any]


@dataclass(slots=True)
class Generated:
    text: str
    tokens: int
    confidence: float  # mean probability of the chosen tokens


def _settings_key(gen: dict[str, Any]) -> SettingsKey:
    return (
        int(gen.get("max_new_tokens", 256)),
        float(gen.get("temperature", 0.0) or 0.0),
        float(gen.get("top_p", 1.0) or 1.0),
        float(gen.get("repetition_penalty", 1.0) or 1.0),
    )


@torch.inference_mode()
def generate_batch(
    model: GenerativeModel, tokenizer: PreTrainedTokenizerBase, rows: list[GenRow]
) -> list[Generated]:
    """Generate a continuation for each row; results in row order."""
    results: list[Generated | None] = [None] * len(rows)
    groups: dict[SettingsKey, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(_settings_key(row.generation), []).append(i)
    for key, indices in groups.items():
        outs = _generate_group(model, tokenizer, [rows[i] for i in indices], key)
        for i, out in zip(indices, outs, strict=True):
            results[i] = out
    return [r for r in results if r is not None]


def _generate_group(
    model: GenerativeModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[GenRow],
    key: SettingsKey,
) -> list[Generated]:
    max_new_tokens, temperature, top_p, repetition_penalty = key
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    width = max(len(r.prompt_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        k = len(row.prompt_ids)
        input_ids[i, width - k :] = torch.tensor(row.prompt_ids, dtype=torch.long)
        mask[i, width - k :] = 1
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": pad_id,
        "eos_token_id": tokenizer.eos_token_id,
        "return_dict_in_generate": True,
        "output_scores": True,
    }
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = repetition_penalty
    if hasattr(model, "peft_config"):
        kwargs["adapter_names"] = [r.adapter or "__base__" for r in rows]
    out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs)
    new = out.sequences[:, width:]
    results: list[Generated] = []
    for i in range(len(rows)):
        tokens = new[i].tolist()
        n = len(tokens)
        if tokenizer.eos_token_id in tokens:
            n = tokens.index(tokenizer.eos_token_id)
        probs = [
            float(torch.softmax(step[i].float(), dim=-1)[tokens[t]])
            for t, step in enumerate(out.scores[:n])
        ]
        # decode of one flat id list is one string; the stub's union also covers batches
        text = cast(str, tokenizer.decode(tokens[:n], skip_special_tokens=True))
        results.append(Generated(text, n, sum(probs) / len(probs) if probs else 0.0))
    return results
