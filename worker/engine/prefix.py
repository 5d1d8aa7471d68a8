"""Which leading tokens of a template's prompts can share one cached key/value prefix.

A prompt is always the tokenisation of the whole rendered text (what the model sees when
nobody caches anything). The instruction before the first placeholder is the same in
every prompt of a template, but its tokens are not always the same: SentencePiece starts
a separately tokenised text with ``▁`` and byte-level BPE may merge across the cut. So
the cacheable prefix is not "the instruction tokenised alone" but the tokens that the
instruction alone and whole prompts rendered with different inputs have in common, and a
request uses the cache only when its own ids start with them (checked per request). The
result is exact by construction: the cached keys/values are those of the very tokens the
request's prompt starts with.
"""

from __future__ import annotations

from typing import Any

from mole.worker.engine.templates import TEXT_FIELDS, Template

#: inputs of different scripts and shapes, rendered to find the tokens every prompt shares
PROBES: tuple[str, ...] = ("a", "Review 12: fine.", "日本語のテキスト", "İSTANBUL — «x»")
#: a shorter shared prefix is not worth a cache entry
MIN_TOKENS = 2


def instruction_text(template: Template) -> str:
    """The template's text up to the start of the line of its first placeholder."""
    starts = [template.prompt.find("{{" + name) for name in template.fields]
    first = min((s for s in starts if s >= 0), default=-1)
    return template.prompt[: template.prompt.rfind("\n", 0, first) + 1] if first > 0 else ""


def common_prefix(sequences: list[list[int]]) -> list[int]:
    """The longest list every sequence starts with."""
    if not sequences:
        return []
    shortest = min(sequences, key=len)
    for i, token in enumerate(shortest):
        if any(seq[i] != token for seq in sequences):
            return shortest[:i]
    return list(shortest)


def shared_prefix(template: Template, tokenizer: Any) -> tuple[str, list[int]]:
    """(instruction text, the token ids every prompt of ``template`` starts with).

    Returns ``("", [])`` when the template has no instruction line before its inputs or
    the shared tokens are too few to be worth caching.
    """
    text = instruction_text(template)
    if not text:
        return "", []
    sequences = [tokenizer(text, add_special_tokens=True)["input_ids"]]
    for probe in PROBES:
        values = dict.fromkeys(template.fields, probe)
        values.update({k: probe for k in TEXT_FIELDS})
        values["language"] = "English"
        rendered = template.render(values)
        sequences.append(tokenizer(rendered, add_special_tokens=True)["input_ids"])
    ids = common_prefix(sequences)
    # the last shared token could still merge with a different input: keep it out
    ids = ids[:-1]
    if len(ids) < MIN_TOKENS:
        return "", []
    return text, ids
