"""Classify request bodies as real clients send them, and the wrk script that cycles them.

A benchmark that sends one fixed body measures a server whose caches always hit: every
per-text step (language identification, JSON decoding of the same bytes) looks cheaper
than it is. Real clients send many different texts under one task description, so
``rotating_bodies`` pairs a few hundred distinct texts in the served languages (native
speakers' sentences from Django's gettext catalogs, 40+ characters: the long-text path,
as most classify texts are) with a handful of distinct descriptions, and
``wrk_script`` writes a wrk Lua script whose ``request`` function cycles through them.

Only pairs the real gating pipeline routes without an error are kept (and only to tasks
the fixed-answer worker takes without extra fields), so every request is answered 200
and the benchmark's non-2xx count stays a real failure signal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: a handful of task descriptions, as clients write them (English and a few others)
DESCRIPTIONS: tuple[str, ...] = (
    "Rate the sentiment of this financial statement",
    "Rate the sentiment of this text from 1 (very negative) to 5 (very positive).",
    "Classify this financial news article into one of six topics.",
    "Tell me how many stars this online banking review deserves.",
    "Bewerte die Stimmung dieses Textes von 1 bis 5.",
    "Classe cet article d'actualité financière dans l'un des six thèmes.",
)
#: served languages the texts are drawn from (the registry's twelve)
LANGUAGES: tuple[str, ...] = (
    "en", "de", "fr", "es", "it", "nl", "sv", "da", "pl", "tr", "ja", "zh",
)  # fmt: skip
#: tasks whose fixed-answer worker needs nothing but the text
TASKS: frozenset[str] = frozenset({"rating", "news"})

SINGLE_TEXT = "The quarterly revenue rose 12 percent and the company raised its full-year outlook."
SINGLE_DESCRIPTION = DESCRIPTIONS[0]


def paired_with_descriptions(texts: list[str]) -> list[dict[str, str]]:
    """Each text with one of ``DESCRIPTIONS`` in turn: the next one where the real gating
    pipeline refuses the pair (a task not served in that language) or routes it to a task
    outside ``TASKS``; a text no description fits is dropped."""
    from mole.gating import GatingError, GatingPipeline

    pipeline = GatingPipeline.load()
    bodies: list[dict[str, str]] = []
    for i, text in enumerate(texts):
        for n in range(len(DESCRIPTIONS)):
            description = DESCRIPTIONS[(i + n) % len(DESCRIPTIONS)]
            try:
                routed = pipeline.route(text, description)
            except GatingError:
                continue
            if routed.task in TASKS:
                bodies.append({"text": text, "description": description})
                break
    return bodies


def single_body() -> dict[str, str]:
    """The one fixed body of the benchmark's ``--bodies single`` mode."""
    return {"text": SINGLE_TEXT, "description": SINGLE_DESCRIPTION}


def rotating_bodies(per_language: int = 30, min_chars: int = 40) -> list[dict[str, str]]:
    """Distinct texts (``per_language`` in each served language, where the catalogs have
    that many), each paired with one of ``DESCRIPTIONS`` in turn (the next one where the
    real gating pipeline refuses the pair: a task not served in that language); a text
    no description fits is dropped."""
    from tests.gating.po_samples import sentences

    texts = [
        text
        for code in LANGUAGES
        for text in sentences(code, min_chars=min_chars, limit=per_language)
    ]
    return paired_with_descriptions(texts)


def long_bodies(per_language: int = 10, seed: int = 11) -> list[dict[str, str]]:
    """Article-length texts (1,500-6,000 characters: sentences of one served language
    joined), ``per_language`` per language, paired with descriptions as in
    ``rotating_bodies``: what a client classifying news articles sends."""
    import random

    from tests.gating.po_samples import sentences

    rng = random.Random(seed)
    texts: list[str] = []
    for code in LANGUAGES:
        pool = sentences(code, min_chars=20, limit=10**6)
        for _ in range(per_language):
            target = rng.randint(1500, 6000)
            parts: list[str] = []
            while sum(len(p) + 1 for p in parts) < target:
                parts.append(rng.choice(pool))
            texts.append(" ".join(parts))
    return paired_with_descriptions(texts)


def bodies_of_kind(kind: str) -> list[dict[str, str]]:
    """``rotating`` (default), ``long`` (article-length texts) or ``single``."""
    if kind == "rotating":
        return rotating_bodies()
    if kind == "long":
        return long_bodies()
    if kind == "single":
        return [single_body()]
    raise ValueError(f"unknown body set {kind!r}: rotating, long or single")


BODY_KINDS = ("rotating", "long", "single")


def _lua_long_string(text: str) -> str:
    """``text`` as a Lua long-bracket literal (raw bytes, no escapes to get wrong)."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def wrk_script(path: Path, token: str, bodies: list[dict[str, Any]]) -> Path:
    """A wrk script POSTing ``bodies`` (JSON, UTF-8) in turn; each wrk thread starts at a
    different offset so the threads do not send the same text at the same moment."""
    if not bodies:
        raise ValueError("no bodies to send")
    literals = ",\n".join(
        "  " + _lua_long_string(json.dumps(b, ensure_ascii=False, separators=(",", ":")))
        for b in bodies
    )
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
        f"local bodies = {{\n{literals}\n}}\n"
        "local requests = {}\n"
        "local threads = 0\n"
        "function setup(thread)\n"
        "  thread:set('offset', threads * 7919)\n"
        "  threads = threads + 1\n"
        "end\n"
        "local i = 0\n"
        "function init(args)\n"
        "  i = (offset or 0) % #bodies\n"
        "  for n, body in ipairs(bodies) do\n"
        "    requests[n] = wrk.format(nil, nil, nil, body)\n"
        "  end\n"
        "end\n"
        "function request()\n"
        "  i = i % #requests + 1\n"
        "  return requests[i]\n"
        "end\n",
        encoding="utf-8",
    )
    return path
