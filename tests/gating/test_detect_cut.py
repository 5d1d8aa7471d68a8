"""Language detection reads a long text's opening only (its cost grows with the text);
the expert still gets the whole text. Real detector, real registry and router."""

from __future__ import annotations

from mole.gating.pipeline import MAX_DETECT_CHARS
from tests.gating.gating_samples import DESCRIPTIONS, SENTENCES


def _repeat(sentence: str, chars: int) -> str:
    return " ".join([sentence] * (chars // (len(sentence) + 1) + 1))[:chars]


def test_the_language_is_read_from_the_opening_of_a_long_text(pipeline):
    # a German opening as long as the cut, then five times as much English: read whole,
    # it is English; read as the pipeline reads it, German
    opening = _repeat(SENTENCES["de"], MAX_DETECT_CHARS)
    text = opening + " " + _repeat(SENTENCES["en"], 5 * MAX_DETECT_CHARS)
    assert pipeline.detector.detect(text).language.code == "en"  # the reference: all of it
    result = pipeline.route(text, DESCRIPTIONS["rating"])
    assert result.language.code == "de"
    assert result.expert.language.code == "de"


def test_a_text_within_the_cut_is_read_whole(pipeline):
    # English opening, German after it, all within the cut: read whole, German wins
    text = SENTENCES["en"] + " " + _repeat(SENTENCES["de"], MAX_DETECT_CHARS // 2)
    assert len(text) <= MAX_DETECT_CHARS
    assert pipeline.route(text, DESCRIPTIONS["rating"]).language.code == "de"
