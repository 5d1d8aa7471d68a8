"""Short-text language identification: fastText alone against fastText + Lingua.

Texts of 10-30 characters (150 Django catalog strings per served language, the labelled
set of tests/gating/test_language.py), each read three ways: alone, with a held-out task
description in its own language, and with an English one. Three detectors run in the same
process, text by text, interleaved, so latencies compare under the same load: fastText
alone, fastText + Lingua as shipped (Lingua asked only where fastText is not already sure),
and fastText + Lingua asked on every short text (the method before that skip).

The constants of gating/language.py that weigh Lingua in were chosen on the even-indexed
texts (half A); half B was not looked at when choosing, so B is the figure to quote. Also
printed: how often short texts in six unserved languages are refused, the per-text
latency (median, p99) and Lingua's first-load time and memory.

Run: .venv/bin/python tests/benchmarks/bench_short_language.py
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tests.gating.po_samples as po_samples
from mole.gating.errors import LanguageUncertain, UnsupportedLanguage
from mole.gating.language import LanguageDetector
from tests.gating.test_language import SERVED, EveryShortTextAsksLingua, _served_descriptions

UNSERVED = ("pt", "nb", "ca", "ro", "ru", "id")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_reading(
    det: LanguageDetector, text: str, description: str | None
) -> tuple[str | None, float]:
    """The language ``det`` reads (None where it refuses) and the seconds it took."""
    t0 = time.perf_counter()
    try:
        code: str | None = det.detect(text, description).code
    except (LanguageUncertain, UnsupportedLanguage):
        code = None
    return code, time.perf_counter() - t0


def main() -> None:
    texts = {code: po_samples.short_texts(code, limit=150) for code in (*SERVED, *UNSERVED)}
    descriptions = _served_descriptions()
    detectors = {
        "fastText": LanguageDetector(SERVED, second_opinion=False),
        "fastText+Lingua": LanguageDetector(SERVED),
        "Lingua always": EveryShortTextAsksLingua(SERVED),
    }
    both = detectors["fastText+Lingua"]
    assert both.second_opinion is not None, "lingua-language-detector is not installed"
    rss0, t0 = _rss_mb(), time.perf_counter()
    both.detect("Nulstil adgangskode")  # the first short text loads Lingua's models
    detectors["Lingua always"].detect("Nulstil adgangskode")
    print(
        f"Lingua first load (12 languages, high accuracy): {time.perf_counter() - t0:.2f} s, "
        f"max RSS +{_rss_mb() - rss0:.0f} MB so far"
    )
    modes = {"alone": None, "same-language description": "", "English description": "en"}
    latency: dict[str, list[float]] = {name: [] for name in detectors}
    for mode, pool_language in modes.items():
        print(f"\n== {mode}: accuracy per language, half A (tuned on) / half B (held out)")
        rows: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in detectors}
        for code in SERVED:
            pool = [] if pool_language is None else descriptions[pool_language or code]
            hits: dict[str, list[bool]] = {name: [] for name in detectors}
            for i, text in enumerate(texts[code]):
                description = pool[i % len(pool)] if pool else None
                for name, det in detectors.items():
                    got, seconds = timed_reading(det, text, description)
                    hits[name].append(got == code)
                    latency[name].append(seconds)
            for name in detectors:
                a, b = hits[name][0::2], hits[name][1::2]
                rows[name][code] = (sum(a) / len(a), sum(b) / len(b))
        print(f"{'':16}" + "".join(f"{c:>10}" for c in SERVED) + f"{'mean':>10}{'min':>6}")
        for name, row in rows.items():
            for half, tag in ((0, "A"), (1, "B")):
                values = [row[c][half] for c in SERVED]
                print(
                    f"{name + ' ' + tag:16}"
                    + "".join(f"{v:>10.3f}" for v in values)
                    + f"{statistics.mean(values):>10.3f}{min(values):>6.2f}"
                )
    print("\n== short texts in unserved languages, share refused (no description)")
    for name, det in detectors.items():
        shares = {}
        for code in UNSERVED:
            refused = [timed_reading(det, t, None)[0] is None for t in texts[code]]
            shares[code] = sum(refused) / len(refused)
        shown = " ".join(f"{c}:{v:.2f}" for c, v in shares.items())
        print(f"{name:16} {shown}  mean {statistics.mean(shares.values()):.3f}")
    print("\n== per short text (all modes above), milliseconds")
    for name, seconds in latency.items():
        ms = sorted(s * 1e3 for s in seconds)
        p99 = ms[int(0.99 * (len(ms) - 1))]
        print(f"{name:16} median {statistics.median(ms):.3f}  p99 {p99:.3f}  n={len(ms)}")
    print(f"\nmax RSS of this process: {_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
