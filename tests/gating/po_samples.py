"""Labelled sentences in the 12 served languages (and a few unserved ones), read from
Django's gettext catalogs.

Django's wheel ships translations of the same UI strings in many languages; a
translation's ``msgstr`` is a real sentence written by a native speaker, labelled by the
catalog's directory. English comes from the ``msgid`` side. Test-only (django is in the
dev extra).
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

#: ISO code -> Django locale directory name
LOCALES = {
    "en": "de",  # English: the msgid side of any catalog
    "de": "de",
    "fr": "fr",
    "es": "es",
    "ja": "ja",
    "zh": "zh_Hans",
    "nl": "nl",
    "it": "it",
    "sv": "sv",
    "da": "da",
    "pl": "pl",
    "tr": "tr",
    # languages the registry does not serve (for refusal tests)
    "pt": "pt",
    "nb": "nb",
    "ca": "ca",
    "ro": "ro",
    "ru": "ru",
    "id": "id",
}

_PLACEHOLDER = re.compile(r"%\([^)]*\)[sdfr]|%[sdfr]|\{[^}]*\}|<[^>]+>|&[a-z]+;")


def _unquote(line: str) -> str:
    body = line[line.index('"') + 1 : line.rindex('"')]
    return body.replace("\\n", " ").replace('\\"', '"').replace("\\\\", "\\")


def _entries(po: Path):
    """(msgid, msgstr) pairs of a .po file (plural forms: the first form)."""
    msgid: list[str] = []
    msgstr: list[str] = []
    current = None
    for raw in [*po.read_text(encoding="utf-8").splitlines(), ""]:
        line = raw.strip()
        if line.startswith("msgid ") or not line:
            if msgid or msgstr:
                yield "".join(msgid), "".join(msgstr)
            msgid, msgstr, current = [], [], None
            if line.startswith("msgid "):
                current = msgid
                msgid.append(_unquote(line))
        elif line.startswith("msgid_plural"):
            current = None
        elif line.startswith("msgstr ") or line.startswith("msgstr[0]"):
            current = msgstr
            msgstr.append(_unquote(line))
        elif line.startswith("msgstr["):
            current = None
        elif line.startswith('"') and current is not None:
            current.append(_unquote(line))


def _clean(text: str) -> str:
    return " ".join(_PLACEHOLDER.sub(" ", text).split())


@functools.cache
def _catalog_texts(code: str, min_chars: int) -> tuple[str, ...]:
    """Every distinct text of ``min_chars``+ characters in language ``code``, sorted
    (parsed once per process: a short-text sample reads all 18 catalogs)."""
    import django

    root = Path(django.__file__).parent
    loc = LOCALES[code]
    files = sorted(root.glob(f"conf/locale/{loc}/LC_MESSAGES/*.po")) + sorted(
        root.glob(f"contrib/*/locale/{loc}/LC_MESSAGES/*.po")
    )
    found: set[str] = set()
    for po in files:
        for msgid, msgstr in _entries(po):
            if not msgid:
                continue  # the catalog header
            text = _clean(msgid if code == "en" else msgstr)
            if len(text) >= min_chars and (code == "en" or text != _clean(msgid)):
                found.add(text)
    return tuple(sorted(found))


def sentences(code: str, *, min_chars: int = 30, limit: int = 100, seed: int = 7) -> list[str]:
    """Up to ``limit`` distinct sentences of ``min_chars``+ characters in language ``code``."""
    ordered = list(_catalog_texts(code, min_chars))
    random.Random(seed).shuffle(ordered)
    return ordered[:limit]


def short_texts(code: str, *, limit: int = 150, max_chars: int = 30) -> list[str]:
    """Up to ``limit`` texts of 10 to ``max_chars`` characters in language ``code`` (menu
    items, field names: the length of a search query or a title).

    A string that also appears in another language's catalog ("Multipolygon", "IPv4")
    has no single language, so it is left out.
    """
    others: set[str] = set()
    for other in LOCALES:
        if other != code:
            others.update(_catalog_texts(other, 10))
    found = [
        t
        for t in sentences(code, min_chars=10, limit=10**6)
        if len(t) <= max_chars and t not in others
    ]
    return found[:limit]
