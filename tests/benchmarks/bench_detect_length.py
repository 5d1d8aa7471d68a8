"""How much of a long text language detection needs to read: cost and answers per cut.

fastText's cost grows with the text (it hashes every word and n-gram), so a long classify
text (a news article) made language identification the largest part of the frontend's CPU
per request. This measures, per cut length, the CPU of ``GatingPipeline.detect_language``
on long texts (native speakers' sentences from Django's catalogs, joined to 1,500-6,000
characters, 30 per served language) and how many of them are read as their own language
and as the same language the uncut text gives. The cut the pipeline uses
(``gating.pipeline.MAX_DETECT_CHARS``) is chosen from this table.

    .venv/bin/python tests/benchmarks/bench_detect_length.py [--cuts 300,500,1000,2000,4000,8000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mole.gating import GatingError, GatingPipeline
from tests.gating.po_samples import sentences

LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "sv", "da", "pl", "tr", "ja", "zh")


def long_texts(code: str, n: int = 30, seed: int = 11) -> list[str]:
    """``n`` texts of 1,500-6,000 characters, each sentences of one language joined."""
    pool = sentences(code, min_chars=20, limit=10**6)
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        target = rng.randint(1500, 6000)
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < target:
            parts.append(rng.choice(pool))
        texts.append(" ".join(parts))
    return texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", default="300,500,1000,2000,4000,8000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cuts = [int(c) for c in args.cuts.split(",")]
    pipeline = GatingPipeline.load()
    texts = {code: long_texts(code) for code in LANGUAGES}
    every = [(code, t) for code, ts in texts.items() for t in ts]
    mean_chars = statistics.mean(len(t) for _, t in every)
    print(f"{len(every)} texts, {mean_chars:.0f} characters on average")

    def language(text: str) -> str:
        try:
            return pipeline.detector.detect(text).language.code
        except GatingError as err:
            return err.code

    full = {t: language(t) for _, t in every}
    print(f"{'cut':>6} {'us/text':>9} {'own language':>13} {'as uncut':>9}")
    for cut in cuts:
        cpu = []
        for _ in range(args.rounds):
            started = time.process_time()
            answers = [(code, t, language(t[:cut])) for code, t in every]
            cpu.append((time.process_time() - started) / len(every) * 1e6)
        own = sum(answer == code for code, _, answer in answers)
        same = sum(answer == full[t] for _, t, answer in answers)
        print(
            f"{cut:>6} {statistics.median(cpu):>9.0f} {own:>7}/{len(every)} {same:>5}/{len(every)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
