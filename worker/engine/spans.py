"""Finding a model's entity text in the original input, with offsets into the original.

The model never saw the original: the prompt cleaning collapsed every whitespace run
(non-breaking spaces and newlines included) to one space, and the model may answer in
another case or in composed (NFC) form where the input was decomposed (NFD). So both the
input and the entity are *folded* the same way (whitespace runs → one space, NFC, and
optionally case folding) while every folded character remembers which original characters
it came from. A match in folded text maps back to a span of the original, whatever the
script: ``İ`` folds to two characters and ``ß`` to ``ss``, yet offsets stay those of the
original text.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Folded:
    """Folded text and, per folded character, the original span ``[starts[i], ends[i])``."""

    text: str
    starts: list[int]
    ends: list[int]


def _units(text: str) -> list[tuple[int, int]]:
    """Spans of a base character with its combining marks, or of a whitespace run."""
    units: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        if text[i].isspace():
            while j < n and text[j].isspace():
                j += 1
        else:
            while j < n and unicodedata.combining(text[j]):
                j += 1
        units.append((i, j))
        i = j
    return units


def _dotless(text: str) -> str:
    """Turkish dotted/dotless i as plain ``i``: ``İ``.casefold() is ``i̇`` (two characters),
    while a model writing "İstanbul" for "İSTANBUL" ends other words with a plain ``i``."""
    return text.replace("i\u0307", "i").replace("ı", "i")


def fold(text: str, *, casefold: bool) -> Folded:
    """``text`` with whitespace runs as one space, in NFC, case-folded if asked."""
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for start, end in _units(text):
        piece = text[start:end]
        if piece[0].isspace():
            folded = " "
        else:
            folded = unicodedata.normalize("NFC", piece)
            if casefold:
                folded = _dotless(unicodedata.normalize("NFC", folded.casefold()))
        out.append(folded)
        starts.extend([start] * len(folded))
        ends.extend([end] * len(folded))
    return Folded("".join(out), starts, ends)


def fold_needle(text: str, *, casefold: bool) -> str:
    return fold(text.strip(), casefold=casefold).text


def _nth(haystack: str, needle: str, n: int) -> int:
    pos = -1
    for _ in range(n):
        pos = haystack.find(needle, pos + 1)
        if pos < 0:
            return -1
    return pos


def find_span(text: str, needle: str, occurrence: int) -> tuple[int, int] | None:
    """Original ``(start, end)`` of the ``occurrence``-th (1-based) ``needle`` in ``text``.

    Tried in order: the exact text; the same text up to whitespace and Unicode
    normalisation; then also ignoring case. None when absent.
    """
    if not needle.strip() or occurrence < 1:
        return None
    pos = _nth(text, needle, occurrence)
    if pos >= 0:
        return pos, pos + len(needle)
    for casefold in (False, True):
        folded = fold(text, casefold=casefold)
        target = fold_needle(needle, casefold=casefold)
        pos = _nth(folded.text, target, occurrence)
        if pos >= 0:
            return folded.starts[pos], folded.ends[pos + len(target) - 1]
    return None
