"""Prompt templates per task, chosen by the base model's family, rendered within a token budget.

A template file (``configs/templates/<task>.json``) maps a family (``llama2``, ``llama3``,
``qwen2``, ``mistral``, ``bloom``, ``xglm``) or a base_model_key to ``{"prompt": ...,
"answer_prefix": ...}``. Placeholders are ``{{input}}`` (classification text), ``{{query}}``
and ``{{product}}`` (ESCI) and ``{{language}}``. The prompt ends with the answer cue; a
label is scored (or generation starts) right after it, preceded by ``answer_prefix``.

Inputs are limited in tokens, not characters: only the placeholder text is cut, never the
instruction or the answer cue, and the caller learns whether anything was cut.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mole.worker.engine.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
TEXT_FIELDS = ("input", "query", "product")


@dataclass(frozen=True, slots=True)
class Template:
    """One prompt for one (task, family)."""

    prompt: str
    answer_prefix: str = ""
    source: str = ""

    @property
    def fields(self) -> list[str]:
        return [m.group(1) for m in _PLACEHOLDER.finditer(self.prompt)]

    def render(self, values: dict[str, str]) -> str:
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), self.prompt)

    @property
    def answer_cue(self) -> str:
        """The fixed text after the last placeholder: what a label continues."""
        matches = list(_PLACEHOLDER.finditer(self.prompt))
        return self.prompt[matches[-1].end() :] if matches else self.prompt


def load_template(path: Path, base_model_key: str, family: str) -> Template:
    """The template for a base model from a task's template file.

    Lookup order: the base_model_key, then the family, then ``"default"``.

    Raises:
        ModelLoadError: the file is missing, unreadable, or has no entry for this model.
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"prompt template file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"prompt template file {path} is unreadable: {err}") from err
    entries: dict[str, Any] = raw.get("templates", raw) if isinstance(raw, dict) else {}
    for key in (base_model_key, family, "default"):
        entry = entries.get(key)
        if entry is None:
            continue
        if isinstance(entry, str):
            entry = {"prompt": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
            raise ModelLoadError(f"{path}: entry {key!r} must be a string or {{'prompt': ...}}")
        return Template(entry["prompt"], str(entry.get("answer_prefix", "")), f"{path}#{key}")
    known = ", ".join(k for k in entries if not k.startswith("_"))
    raise ModelLoadError(
        f"{path}: no prompt for base model {base_model_key!r} or family {family!r} (has: {known})"
    )


@dataclass(slots=True)
class RenderedPrompt:
    text: str
    input_ids: list[int]
    truncated: bool


def _share(lengths: dict[str, int], budget: int) -> dict[str, int]:
    """Split a token budget among fields: short fields keep everything, long ones share."""
    alloc: dict[str, int] = {}
    remaining = budget
    items = sorted(lengths.items(), key=lambda kv: kv[1])
    for i, (key, n) in enumerate(items):
        take = min(n, remaining // (len(items) - i))
        alloc[key] = take
        remaining -= take
    return alloc


def _clean(text: str) -> str:
    return " ".join(text.split())


def render_within(
    template: Template,
    values: dict[str, str],
    tokenizer: PreTrainedTokenizerBase,
    max_input_tokens: int,
) -> RenderedPrompt:
    """Render ``template`` so the whole prompt fits ``max_input_tokens`` tokens.

    Only the text fields (``input``, ``query``, ``product``) are cut, from their ends; when
    several are present the longest is cut first. The result is tokenized with the
    tokenizer's special tokens (BOS), as the model saw it in training.
    """
    values = {k: (_clean(v) if k in TEXT_FIELDS else v) for k, v in values.items()}

    def encode(vals: dict[str, str]) -> list[int]:
        ids: list[int] = tokenizer(template.render(vals), add_special_tokens=True)["input_ids"]
        return ids

    ids = encode(values)
    if len(ids) <= max_input_tokens:
        return RenderedPrompt(template.render(values), ids, False)
    fixed = len(encode({k: ("" if k in TEXT_FIELDS else v) for k, v in values.items()}))
    budget = max_input_tokens - fixed
    if budget <= 0:
        raise ValueError(
            f"the template alone takes {fixed} tokens, over max_input_tokens={max_input_tokens}"
        )
    pieces = {
        k: tokenizer(v, add_special_tokens=False)["input_ids"]
        for k, v in values.items()
        if k in TEXT_FIELDS and v
    }
    lengths = _share({k: len(v) for k, v in pieces.items()}, budget)
    cut = dict(values)
    for key, ids_k in pieces.items():
        # decode of one flat id list is one string; the stub's union also covers batches
        cut[key] = cast(str, tokenizer.decode(ids_k[: lengths[key]], skip_special_tokens=True))
    ids = encode(cut)
    # Re-tokenizing decoded text can merge differently; trim until it fits.
    while len(ids) > max_input_tokens and any(cut[k] for k in pieces):
        longest = max(pieces, key=lambda k: len(cut[k]))
        cut[longest] = cut[longest][: max(0, len(cut[longest]) - max(1, len(cut[longest]) // 20))]
        ids = encode(cut)
    return RenderedPrompt(template.render(cut), ids, True)
