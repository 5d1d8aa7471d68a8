"""How many languages Lingua weighs for a described, unsure short text: answers and cost.

Where a short text (10-30 characters) has a description and fastText reads a served
language at 0.5-0.95, gating/language.py asks Lingua about fastText's
``lingua_candidates`` best served readings plus the description's language. This script
reads the labelled short texts of tests/gating/test_language.py (150 per served language;
half A = even-indexed texts, the tuning half; half B = odd-indexed, held out) with the
shipped count (4, ``_LINGUA_CANDIDATES``) and with 3, 2 and 1, text by text, interleaved
(the order of the counts turns with each text, so none always runs first), and prints:

1. per half and count, how many answers differ from the shipped count's
   (right -> wrong, wrong -> right, wrong -> other wrong), over all three description
   conditions (alone, same-language description, English description);
2. per half, condition and count, the accuracy per language (and the share of short
   texts in six unserved languages refused, which has no description and so never takes
   the fewer-languages path: it is printed to show it stays put);
3. the per-text latency (median, p99) of each count over the texts that take the
   fewer-languages path, and over all short texts;
4. Lingua's own cost per ``compute_language_confidence_values`` call against the number
   of languages it weighs (1..12), models loaded, on the same texts.

Run: .venv/bin/python tests/benchmarks/bench_lingua_candidates.py
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tests.gating.po_samples as po_samples
from mole.gating.language import _LINGUA_CANDIDATES, LanguageDetector
from tests.benchmarks.bench_short_language import timed_reading
from tests.gating.test_language import SERVED, _served_descriptions

UNSERVED = ("pt", "nb", "ca", "ro", "ru", "id")
COUNTS = (4, 3, 2, 1)
MODES = {"alone": None, "same-language description": "", "English description": "en"}


class FewerCandidates(LanguageDetector):
    """The shipped detector, except that Lingua weighs only ``count`` (at most the shipped
    4) of fastText's best served readings plus the description's language. Derived from
    the shipped candidate list, whose first entries are fastText's ranked readings (the
    description's language comes after them, and only when not among them)."""

    def __init__(self, count: int) -> None:
        super().__init__(SERVED)
        self.count = count

    def _lingua_candidates(  # type: ignore[override]
        self, text_dist: dict[str, float], raw_label: str, desc_top: str, served: frozenset[str]
    ) -> list[str] | None:
        shipped = LanguageDetector._lingua_candidates(text_dist, raw_label, desc_top, served)
        if shipped is None:
            return None
        candidates = shipped[: self.count]
        if desc_top in served and desc_top not in candidates:
            candidates.append(desc_top)
        return candidates


def _detector_with(count: int) -> LanguageDetector:
    """A detector whose Lingua weighs ``count`` of fastText's best served readings (the
    shipped one for 4)."""
    return LanguageDetector(SERVED) if count == 4 else FewerCandidates(count)


def _takes_fewer_path(det: LanguageDetector, text: str, description: str | None) -> bool:
    """Whether this text asks Lingua about fewer than all served languages (the case
    ``lingua_candidates`` governs), read off the detector's own stages."""
    if description is None or len(text) < 10 or len(text) >= det.short_chars:
        return False
    text_dist, raw_label, raw_p = det._predict_short(text)
    desc_dist = det._description_languages(description)
    desc_top = next(iter(desc_dist), "unknown")
    served = det._short_served
    if det._sure_without_lingua(raw_label, raw_p, desc_top, served):
        return False
    return det._lingua_candidates(text_dist, raw_label, desc_top, served) is not None


def _ms(seconds: list[float]) -> str:
    ms = sorted(s * 1e3 for s in seconds)
    p99 = ms[int(0.99 * (len(ms) - 1))]
    return f"median {statistics.median(ms):.3f}  p99 {p99:.3f}  n={len(ms)}"


def answers_and_latency(rounds: int) -> None:
    texts = {code: po_samples.short_texts(code, limit=150) for code in (*SERVED, *UNSERVED)}
    descriptions = _served_descriptions()
    assert COUNTS[0] == _LINGUA_CANDIDATES, "the shipped count changed: update COUNTS"
    detectors = {k: _detector_with(k) for k in COUNTS}
    for det in detectors.values():
        det.detect("Nulstil adgangskode", "Klassificer teksten")  # loads Lingua's models
    shipped = detectors[COUNTS[0]]
    # (mode, language, index) -> answer, per count
    answers: dict[int, dict[tuple[str, str, int], str | None]] = {k: {} for k in COUNTS}
    latency_fewer: dict[int, list[float]] = {k: [] for k in COUNTS}
    latency_all: dict[int, list[float]] = {k: [] for k in COUNTS}
    fewer_keys: set[tuple[str, str, int]] = set()
    for mode, pool_language in MODES.items():
        for code in SERVED:
            pool = [] if pool_language is None else descriptions[pool_language or code]
            for i, text in enumerate(texts[code]):
                description = pool[i % len(pool)] if pool else None
                key = (mode, code, i)
                fewer = _takes_fewer_path(shipped, text, description)
                if fewer:
                    fewer_keys.add(key)
                turn = (i + len(fewer_keys)) % len(COUNTS)
                order = COUNTS[turn:] + COUNTS[:turn]
                for _ in range(rounds):
                    for k in order:
                        got, seconds = timed_reading(detectors[k], text, description)
                        answers[k][key] = got
                        latency_all[k].append(seconds)
                        if fewer:
                            latency_fewer[k].append(seconds)
    print(f"texts that take the fewer-languages path: {len(fewer_keys)} of {len(answers[4])}")
    print("\n== answers that differ from the shipped count (4), by half")
    for half, parity in (("A", 0), ("B", 1)):
        for k in COUNTS[1:]:
            worse = better = sideways = 0
            for key, got in answers[k].items():
                if key[2] % 2 != parity:
                    continue
                before, right = answers[4][key], key[1]
                if got == before:
                    continue
                if before == right:
                    worse += 1
                elif got == right:
                    better += 1
                else:
                    sideways += 1
            print(
                f"half {half} k={k}: right->wrong {worse}  wrong->right {better}  "
                f"wrong->other wrong {sideways}"
            )
            for (mode, code, i), got in sorted(answers[k].items()):
                before = answers[4][(mode, code, i)]
                if i % 2 == parity and got != before:
                    print(
                        f"    {mode}, {code} #{i} {texts[code][i]!r}: "
                        f"k=4 says {before}, k={k} says {got}"
                    )
    print("\n== accuracy per language (a refusal is wrong)")
    for mode in MODES:
        print(f"-- {mode}")
        print(f"{'':10}" + "".join(f"{c:>7}" for c in SERVED) + f"{'mean':>8}{'min':>7}")
        for half, parity in (("A", 0), ("B", 1)):
            for k in COUNTS:
                values = []
                for code in SERVED:
                    hits = [
                        got == code
                        for (m, c, i), got in answers[k].items()
                        if m == mode and c == code and i % 2 == parity
                    ]
                    values.append(sum(hits) / len(hits))
                print(
                    f"{half} k={k}:".ljust(10)
                    + "".join(f"{v:>7.3f}" for v in values)
                    + f"{statistics.mean(values):>8.3f}{min(values):>7.3f}"
                )
    print("\n== short texts in unserved languages, share refused (no description), A / B")
    for k, det in detectors.items():
        shown = []
        for code in UNSERVED:
            refused = [timed_reading(det, t, None)[0] is None for t in texts[code]]
            a, b = refused[0::2], refused[1::2]
            shown.append(f"{code}:{sum(a) / len(a):.2f}/{sum(b) / len(b):.2f}")
        print(f"k={k}: " + " ".join(shown))
    print(f"\n== detect() per short text, milliseconds ({rounds} rounds, interleaved)")
    for k in COUNTS:
        print(f"k={k} fewer-languages path: {_ms(latency_fewer[k])}")
    for k in COUNTS:
        print(f"k={k} all short texts:       {_ms(latency_all[k])}")


def lingua_cost_by_languages(rounds: int, subsets: int = 8) -> None:
    """Lingua alone, models preloaded: microseconds per call against languages weighed.

    Each count n is ``subsets`` random sets of n served languages (seeded): Lingua first
    drops the languages whose script the text does not use, so which languages are in
    the set matters as much as how many (a Latin-script text costs little against ja+zh).
    """
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in SERVED]
    texts = [t for c in SERVED for t in po_samples.short_texts(c, limit=150)[:20]]
    draw = random.Random(18)
    built: dict[int, list[object]] = {}
    for n in range(1, len(languages) + 1):
        sets = [draw.sample(languages, n) for _ in range(subsets if n < len(languages) else 1)]
        built[n] = [
            LanguageDetectorBuilder.from_languages(*chosen).with_preloaded_language_models().build()
            for chosen in sets
        ]
    per_call: dict[int, list[float]] = {n: [] for n in built}
    for _ in range(rounds):
        for text in texts:
            for n, detectors in built.items():
                for detector in detectors:
                    t0 = time.perf_counter()
                    detector.compute_language_confidence_values(text)  # type: ignore[attr-defined]
                    per_call[n].append(time.perf_counter() - t0)
    print(
        f"\n== Lingua compute_language_confidence_values, models loaded: {len(texts)} short "
        f"texts (20 per served language) x {rounds} rounds x {subsets} random language sets "
        "per count, interleaved"
    )
    base = statistics.median(per_call[len(languages)])
    for n, seconds in per_call.items():
        med = statistics.median(seconds)
        ms = sorted(seconds)
        p90 = ms[int(0.9 * (len(ms) - 1))]
        print(
            f"{n:>2} languages: median {med * 1e6:6.1f} us  p90 {p90 * 1e6:6.1f} us  "
            f"({med / base:.2f} of 12)"
        )


def main() -> None:
    print(f"load: {os.getloadavg()}")
    answers_and_latency(rounds=int(os.environ.get("ROUNDS", "3")))
    lingua_cost_by_languages(rounds=5)
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
