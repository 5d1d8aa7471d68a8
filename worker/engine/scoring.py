"""Label scoring: the log-likelihood of every label after the prompt, for a mixed batch.

The prompt is run once per request (``use_cache=True``) and its key/value cache is
repeated per label, so each label continuation costs only its own tokens. Where every
label of a request is a single token, the continuation pass is skipped: the prompt's last
logits already hold every label's probability. Rows may use different adapters (peft's
``adapter_names``) and have different prompt lengths: prompts are left-padded and given
explicit position ids, so a request scores the same alone or in a batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import DynamicCache


@dataclass(slots=True)
class PrefixKV:
    """The key/value cache of a prompt prefix shared by many requests (a template's
    instruction), computed once per (template, adapter): ``layers[i] = (keys, values)``,
    each ``[1, heads, length, head_dim]``."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    length: int


@dataclass(slots=True)
class ScoreRow:
    """One request to score: its prompt tokens, adapter and the token ids of each label."""

    prompt_ids: list[int]
    labels: list[list[int]]
    adapter: str | None = None  # loaded adapter name; None for the base model
    prefix: PrefixKV | None = None  # cache of prompt_ids[:prefix.length], when known


@torch.inference_mode()
def compute_prefix(model: torch.nn.Module, ids: list[int], adapter: str | None) -> PrefixKV | None:
    """Run a shared prefix once; None where the cache layout is not [batch, heads, seq, dim]."""
    device = _device(model)
    out = model(
        input_ids=torch.tensor([ids], dtype=torch.long, device=device),
        use_cache=True,
        logits_to_keep=1,
        **_adapter_kwargs(model, [adapter]),
    )
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    layers = getattr(cache, "layers", None)
    if not layers or any(
        getattr(x, "keys", None) is None or x.keys.dim() != 4 or x.keys.shape[2] != len(ids)
        for x in layers
    ):
        return None
    return PrefixKV([(x.keys, x.values) for x in layers], len(ids))


def _prefixed_inputs(
    rows: list[ScoreRow], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, DynamicCache, int]:
    """Inputs for rows whose prompt starts with a cached prefix: the rest of each prompt,
    left-padded, after the prefixes (left-padded too) placed in one cache."""
    from transformers import DynamicCache

    n = len(rows)
    plens = [r.prefix.length if r.prefix else 0 for r in rows]
    rests = [r.prompt_ids[p:] for r, p in zip(rows, plens, strict=True)]
    width_p, width_r = max(plens), max(len(x) for x in rests)
    input_ids = torch.full((n, width_r), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width_p + width_r), dtype=torch.long)
    for i, (plen, rest) in enumerate(zip(plens, rests, strict=True)):
        input_ids[i, width_r - len(rest) :] = torch.tensor(rest, dtype=torch.long)
        mask[i, width_p - plen : width_p] = 1
        mask[i, width_p + width_r - len(rest) :] = 1
    template = next(r.prefix for r in rows if r.prefix)
    data: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer, (k0, v0) in enumerate(template.layers):
        keys = k0.new_zeros((n, k0.shape[1], width_p, k0.shape[3]))
        values = v0.new_zeros((n, v0.shape[1], width_p, v0.shape[3]))
        for i, row in enumerate(rows):
            if row.prefix:
                keys[i, :, width_p - plens[i] :] = row.prefix.layers[layer][0][0]
                values[i, :, width_p - plens[i] :] = row.prefix.layers[layer][1][0]
        data.append((keys, values))
    return input_ids.to(device), mask.to(device), DynamicCache(ddp_cache_data=data), width_p


def accepts_position_ids(model: torch.nn.Module) -> bool:
    """Whether the underlying transformers model takes ``position_ids`` (Bloom uses ALiBi)."""
    # A PeftModel wraps the transformers model; its own forward takes **kwargs.
    get_base_model = getattr(model, "get_base_model", None)
    base = get_base_model() if callable(get_base_model) else model
    return "position_ids" in inspect.signature(base.forward).parameters


def _adapter_kwargs(model: torch.nn.Module, adapters: list[str | None]) -> dict[str, Any]:
    if not hasattr(model, "peft_config"):
        return {}
    return {"adapter_names": [a if a is not None else "__base__" for a in adapters]}


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def score_batch(
    model: torch.nn.Module, rows: list[ScoreRow], pad_id: int, *, use_positions: bool
) -> list[list[float]]:
    """Sum of token log-probabilities of each label of each row, given its prompt.

    Args:
        model: a causal LM (a PeftModel when rows name adapters).
        rows: the batch; label lists may differ in size and length between rows.
        pad_id: the token used to pad (never attended to).
        use_positions: pass explicit ``position_ids`` (see :func:`accepts_position_ids`).

    Returns:
        For each row, one log-likelihood per label, in the row's label order.
    """
    device = _device(model)
    n = len(rows)
    kwargs = _adapter_kwargs(model, [r.adapter for r in rows])
    need_cont = any(len(label) > 1 for r in rows for label in r.labels)
    if any(r.prefix for r in rows):
        input_ids, mask, prefix_cache, width_p = _prefixed_inputs(rows, pad_id, device)
        kwargs["cache"] = prefix_cache
        if use_positions:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)[:, width_p:]
        need_cont = True  # the cache is there anyway; keep it for the continuations
    else:
        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, row in enumerate(rows):
            k = len(row.prompt_ids)
            input_ids[i, width - k :] = torch.tensor(row.prompt_ids, dtype=torch.long)
            mask[i, width - k :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        if use_positions:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids, attention_mask=mask, use_cache=need_cont, logits_to_keep=1, **kwargs
    )
    first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
    scores = [[float(first[i, label[0]]) for label in row.labels] for i, row in enumerate(rows)]
    if not any(len(label) > 1 for r in rows for label in r.labels):
        return scores

    # Continuations: one row per (request, multi-token label), against the repeated cache.
    pairs = [
        (i, j) for i, r in enumerate(rows) for j, label in enumerate(r.labels) if len(label) > 1
    ]
    cont_width = max(len(rows[i].labels[j]) - 1 for i, j in pairs)
    cont_ids = torch.full((len(pairs), cont_width), pad_id, dtype=torch.long)
    cont_mask = torch.zeros((len(pairs), cont_width), dtype=torch.long)
    for p, (i, j) in enumerate(pairs):
        feed = rows[i].labels[j][:-1]
        cont_ids[p, : len(feed)] = torch.tensor(feed, dtype=torch.long)
        cont_mask[p, : len(feed)] = 1
    index = torch.tensor([i for i, _ in pairs], dtype=torch.long, device=device)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    cache.batch_select_indices(index)
    full_mask = torch.cat([mask[index], cont_mask.to(device)], dim=-1)
    kwargs = _adapter_kwargs(model, [rows[i].adapter for i, _ in pairs])
    if use_positions:
        start = mask[index].sum(-1, keepdim=True)
        kwargs["position_ids"] = start + torch.arange(cont_width, device=device)[None, :]
    cont = model(
        input_ids=cont_ids.to(device),
        attention_mask=full_mask,
        cache=cache,
        use_cache=True,
        **kwargs,
    )
    logp = torch.log_softmax(cont.logits.float(), dim=-1)
    for p, (i, j) in enumerate(pairs):
        targets = rows[i].labels[j][1:]
        idx = torch.tensor(targets, dtype=torch.long, device=device)
        steps = torch.arange(len(targets), device=device)
        scores[i][j] += float(logp[p, steps, idx].sum())
    return scores


@torch.inference_mode()
def score_full(model: torch.nn.Module, row: ScoreRow) -> list[float]:
    """Reference scorer: each label as a full prompt+label sequence, no cache, no padding.

    Slow; used by tests to check :func:`score_batch`, and as a readable definition of it.
    """
    device = _device(model)
    result = []
    for label in row.labels:
        ids = torch.tensor([row.prompt_ids + label], dtype=torch.long, device=device)
        kwargs = _adapter_kwargs(model, [row.adapter])
        logits = model(input_ids=ids, **kwargs).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        k = len(row.prompt_ids)
        result.append(float(sum(logp[k - 1 + t, tok] for t, tok in enumerate(label))))
    return result


def probabilities(log_likelihoods: list[float]) -> list[float]:
    """Softmax over a label set's sequence log-likelihoods."""
    t = torch.tensor(log_likelihoods, dtype=torch.float64)
    return torch.softmax(t, dim=0).tolist()
