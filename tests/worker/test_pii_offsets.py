"""PII offsets in the original text of the 12 served languages, whatever the prompt
cleaning or the model did to whitespace, case and Unicode form."""

from __future__ import annotations

import json
import unicodedata

import pytest

from mole.worker.engine.pii import parse_pii
from mole.worker.engine.spans import find_span, fold
from tests.worker.test_pii import LABELS


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


# (language, original text, the entity as it stands in the original, what the model answers)
CASES = [
    ("en", "Send it to John\u00a0Smith today.", "John\u00a0Smith", "John Smith"),
    ("de", nfd("Kunde: Jürgen  Müller,\nBerlin"), nfd("Jürgen  Müller"), "Jürgen Müller"),
    ("fr", "Contact : Hélène\nDupont, Paris", "Hélène\nDupont", "Hélène Dupont"),
    ("es", "Titular: JOSÉ GARCÍA, cuenta ES91", "JOSÉ GARCÍA", "José García"),
    ("ja", "担当者は山田\u3000太郎です。", "山田\u3000太郎", "山田 太郎"),
    ("zh", "客户张伟的电话是 138 0013\u00a08000。", "138 0013\u00a08000", "138 0013 8000"),
    ("nl", "Mijn naam is Jan de\tVries.", "Jan de\tVries", "Jan de Vries"),
    ("it", "Indirizzo: Via Roma 10,\r\nMilano", "Via Roma 10,\r\nMilano", "Via Roma 10, Milano"),
    ("sv", nfd("Kontakt: ÅSA ÖBERG, Stockholm"), nfd("ÅSA ÖBERG"), "Åsa Öberg"),
    ("da", "Kunde: SØREN  ÆBELØ i Aarhus", "SØREN  ÆBELØ", "Søren Æbelø"),
    ("pl", "Klient: ŁUKASZ ŻÓŁW, Kraków", "ŁUKASZ ŻÓŁW", "Łukasz Żółw"),
    ("tr", "İSTANBUL ŞUBESİ JOHN SMITH, hesap", "JOHN SMITH", "John Smith"),
]


@pytest.mark.parametrize(("lang", "text", "entity", "answer"), CASES, ids=[c[0] for c in CASES])
def test_entity_offsets_point_at_the_original_text(lang, text, entity, answer):
    start = text.index(entity)  # the reference: where the entity really is
    raw = json.dumps([{"text": answer, "label": "person_name", "occurrence": 1}])
    result = parse_pii(raw, text, LABELS)
    assert result.entities == [
        {"text": entity, "label": "person_name", "start": start, "end": start + len(entity)}
    ]


def test_turkish_capitals_before_the_entity_do_not_shift_it():
    text = "İSTANBUL ŞUBESİ JOHN SMITH, hesap"
    assert find_span(text, "john smith", 1) == (16, 26)  # was "HN SMITH, " with .lower()
    assert find_span(text, "İstanbul Şubesi", 1) == (0, 15)
    assert find_span(text, "istanbul şubesi", 1) == (0, 15)


def test_nfd_input_matches_nfc_answer_and_back():
    composed = "Zoë Brontë, Überweisung an Mårten"
    decomposed = nfd(composed)
    assert len(decomposed) > len(composed)
    start = decomposed.index(nfd("Mårten"))
    assert find_span(decomposed, "Mårten", 1) == (start, start + len(nfd("Mårten")))
    assert find_span(composed, nfd("Mårten"), 1) == (composed.index("Mårten"), len(composed))


def test_occurrences_count_in_the_text_the_model_saw():
    text = "John  Smith paid; then John\nSmith left; JOHN SMITH stayed."
    starts = [0, 23, 40]
    for n, start in enumerate(starts, 1):
        span = find_span(text, "John Smith", n)
        assert span is not None
        assert span[0] == start
        assert " ".join(text[span[0] : span[1]].split()).lower() == "john smith"
    assert find_span(text, "John Smith", 4) is None


def test_absent_text_is_still_absent():
    assert find_span("Jan de Vries", "Jan van Vries", 1) is None
    assert find_span("Jan de Vries", "   ", 1) is None


def test_fold_keeps_a_map_to_original_characters():
    folded = fold("A\u00a0\u00a0İx", casefold=True)
    assert folded.text == "a ix"
    assert folded.starts == [0, 1, 3, 4]
    assert folded.ends == [1, 3, 4, 5]
