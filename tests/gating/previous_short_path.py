"""The short-text path as it was before its Python work was cut (commit 3033868), kept
for the side by side in tests/benchmarks/bench_gating.py (stage ``short_before``) and
tests/benchmarks/bench_short_language.py.

Same decisions as the shipped detector (``tests/gating/test_language.py`` checks that
text by text); what differs is the cost: a dict per text for each of fastText's listed
labels, the served languages' scores built in dicts through a prior closure, and a
``max`` with a key function over sorted codes.
"""

from __future__ import annotations

from typing import Any

from mole.gating.errors import LanguageUncertain, UnsupportedLanguage
from mole.gating.language import (
    _FASTTEXT_EXPONENT_SHORT,
    _LINGUA_MIN_CHARS,
    _SHORT_LABEL_FLOOR,
    _SURE_UNSERVED,
    _UNLISTED,
    _UNSERVED_SHARE,
    _UNSERVED_SHARE_DESCRIBED,
    Detection,
    LanguageDetector,
    _display,
)
from mole.protocol.registry import language


class PreviousShortPath(LanguageDetector):
    """The shipped detector with the previous short-text scoring."""

    def __init__(self, served: list[str] | None = None, **options: Any) -> None:
        super().__init__(served, **options)
        # fastText's label for each served language, as the previous path kept it
        self._short_labels = {f"__label__{c}": c for c in self._short_served}

    def _detect_short(self, sample: str, description: str | None) -> Detection:
        """A short text's language: fastText, Lingua (when there) and the description's
        language (when given) as a prior."""
        served = self._short_served
        text_dist, raw_label, raw_p = self._predict_short(sample)
        desc_dist = self._description_languages(description) if description else {}
        # the first key is the description's top reading: fastText ranks its labels, and
        # a dict keeps their order (a max() over its 176 entries cost more than Lingua's
        # dict and the scoring together)
        desc_top = next(iter(desc_dist), "unknown")
        w, n = self.description_weight, len(served)
        lingua = (
            self.second_opinion.distribution(
                sample, self._lingua_candidates(text_dist, raw_label, desc_top, served)
            )
            if self.second_opinion is not None
            and len(sample) >= _LINGUA_MIN_CHARS
            and not self._sure_without_lingua(raw_label, raw_p, desc_top, served)
            else {}
        )

        def prior(code: str) -> float:
            return w * desc_dist.get(code, 0.0) + (1.0 - w) / n if desc_dist else 1.0 / n

        if lingua:
            a = _FASTTEXT_EXPONENT_SHORT
            text_score = {
                c: (text_dist.get(c, 0.0) + _UNLISTED) ** a * (lingua.get(c, 0.0) + _UNLISTED)
                for c in served
            }
        else:
            a = 1.0
            text_score = {c: text_dist.get(c, 0.0) + _UNLISTED for c in served}
        scores = {c: text_score[c] * prior(c) for c in served}
        # a short text fastText is sure is in an unserved language competes as "other";
        # the description vouches for it only when it is itself mostly unserved (a Danish
        # description reads partly as Norwegian, which must not pull its texts away).
        # Lingua cannot speak for a language it was not given: the unserved one gets a
        # fixed share of its opinion, so a Danish text fastText reads as Norwegian is
        # refused only when Lingua, too, finds little Danish in it.
        other = 0.0
        # without a description, an unserved reading counts from the floor, as it does
        # for a longer text (0.5 lost a tenth of the short unserved texts it refused)
        sure = _SURE_UNSERVED if desc_dist else self.floor
        if raw_label not in served and raw_p >= sure:
            vouched = prior(raw_label) if desc_top not in served else (1.0 - w) / n
            share = _UNSERVED_SHARE_DESCRIBED if desc_dist else _UNSERVED_SHARE
            other = raw_p**a * (share if lingua else 1.0) * vouched
        best = max(sorted(scores), key=lambda c: scores[c])
        confidence = scores[best] / (sum(scores.values()) + other)
        names = self.served_names
        if other > scores[best]:
            raise UnsupportedLanguage(
                f"the text is in {_display(raw_label)} (confidence {raw_p:.2f}), which is not "
                f"served; served languages: {', '.join(names)}",
                language=_display(raw_label),
                served=names,
                confidence=round(raw_p, 4),
            )
        if confidence < self.floor:
            raise LanguageUncertain(
                f"cannot tell the language of the short text: best served guess "
                f"{_display(best)} (weighing in the description's language) has confidence "
                f"{confidence:.2f}, under the floor {self.floor:.2f}; write a longer text or "
                f"name the language; served: {', '.join(names)}",
                candidate=_display(best),
                confidence=round(confidence, 4),
                floor=self.floor,
                served=names,
            )
        # the description decided if the text alone would have said another language, or
        # been too unsure to say one
        alone = max(sorted(served), key=lambda c: text_score[c])
        alone_share = text_score[alone] / sum(text_score.values())
        decided = bool(desc_dist) and (best != alone or alone_share < self.floor)
        return Detection(language(best), confidence, raw_label, raw_p, decided)

    def _predict_short(self, sample: str) -> tuple[dict[str, float], str, float]:
        """fastText on a short text: the served languages' probabilities (those it lists
        from ``_SHORT_LABEL_FLOOR``) and its top label with its probability."""
        with self._lock:
            labels, probs = self._model.predict(sample, k=-1, threshold=_SHORT_LABEL_FLOOR)
        if not labels:
            return {}, "unknown", 0.0
        codes = self._short_labels
        # probabilities can exceed 1 by rounding (1.00005): clamp
        dist = {
            codes[label]: min(1.0, p)
            for label, p in zip(labels, probs, strict=True)
            if label in codes
        }
        return dist, labels[0].removeprefix("__label__"), min(1.0, float(probs[0]))
