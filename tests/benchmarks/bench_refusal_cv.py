"""Where the refusal threshold could sit, judged by cross-validation on training data only.

The shipped threshold is chosen on the calibration sets (configs/router_data/heldout.jsonl,
served, and out_of_scope_calibration.jsonl): the most unserved descriptions refused with
at most 1% of the served ones (gating/scope.py). Those sets are small (108 and 72) and the
shipped router separates them, so the in-scope ceiling does not bind and a tie-break picks
the threshold. This script asks what more data says, without touching any held-out set
(heldout_fresh, heldout_short, out_of_scope_heldout are never read):

1. Out-of-fold scores: 5 folds of train.jsonl + out_of_scope_train.jsonl, stratified by
   language; a router (the shipped one's features and training settings) is trained on
   four and scores the fifth. Those are scope scores of descriptions the router has not
   seen, from routers trained on 80% of the data.
2. Unserved task kinds the router has not seen: leave one kind out (summarize, translate,
   ...) of the unserved training data, with a ninth of the served data, and score them.
   Descriptions of new kinds of unserved tasks are what a held-out set holds, and they
   are harder than a fold of kinds seen in training.
3. The threshold ``choose_threshold`` picks on the calibration sets (shipped), on the
   out-of-fold scores, and on both; for each, the share refused on every side, and per
   language for the unseen kinds.
4. Other weightings of the two Q-values (``best - alpha * refuse``) on the unseen kinds,
   at the same share of served descriptions refused.

Run: .venv/bin/python tests/benchmarks/bench_refusal_cv.py [--folds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mole.gating.router import Example, QRouter, read_examples
from mole.gating.scope import choose_threshold, read_out_of_scope
from mole.gating.settings import (
    DEFAULT_IN_SCOPE_CALIBRATION,
    DEFAULT_OUT_OF_SCOPE_CALIBRATION,
    DEFAULT_OUT_OF_SCOPE_TRAIN,
    DEFAULT_TRAIN_DATA,
    load_settings,
)

#: (best task's Q, refuse head's Q, language)
Scored = tuple[float, float, str]


def _languages(path: Path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    return [str(row.get("language")) for row in rows]


def _stratified_folds(labels: list[str], k: int, seed: int = 7) -> list[int]:
    """Fold of each item: the items of each label dealt round-robin, in shuffled order."""
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    dealt: dict[str, int] = {}
    folds = [0] * len(labels)
    for i in order:
        dealt[labels[i]] = dealt.get(labels[i], -1) + 1
        folds[i] = dealt[labels[i]] % k
    return folds


def _trained(shipped: QRouter, served: list[Example], unserved: list[str]) -> QRouter:
    router = QRouter(shipped.domains, spec=shipped.spec, config=shipped.config)
    router.train(served, out_of_scope=unserved)
    return router


def _score(router: QRouter, description: str, domain: str | None, lang: str) -> Scored:
    best, refuse = router.scope_parts(description, domain)
    return best, refuse, lang


def _refused(scored: list[Scored], threshold: float, alpha: float = 1.0) -> float:
    return sum(b - alpha * r < threshold for b, r, _ in scored) / len(scored)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    t0 = time.perf_counter()
    shipped = QRouter.load(load_settings().router_path)
    assert shipped.threshold is not None, "the shipped router has no refusal threshold"
    served = read_examples(DEFAULT_TRAIN_DATA)
    served_langs = _languages(DEFAULT_TRAIN_DATA)
    unserved = read_out_of_scope(DEFAULT_OUT_OF_SCOPE_TRAIN)
    unserved_langs = [str(o.language) for o in unserved]
    kinds = sorted({str(o.unserved_task) for o in unserved})

    # 1. out-of-fold scores
    fold_in = _stratified_folds(served_langs, args.folds)
    fold_out = _stratified_folds(unserved_langs, args.folds)
    oof_in: list[Scored] = []
    oof_out: list[Scored] = []
    for k in range(args.folds):
        router = _trained(
            shipped,
            [e for e, f in zip(served, fold_in, strict=True) if f != k],
            [o.description for o, f in zip(unserved, fold_out, strict=True) if f != k],
        )
        oof_in += [
            _score(router, e.description, e.domain, lang)
            for e, f, lang in zip(served, fold_in, served_langs, strict=True)
            if f == k
        ]
        oof_out += [
            _score(router, o.description, None, str(o.language))
            for o, f in zip(unserved, fold_out, strict=True)
            if f == k
        ]

    # 2. unserved kinds not seen in training (one out at a time, with a ninth of the served)
    ninth = _stratified_folds(served_langs, len(kinds), seed=11)
    new_in: list[Scored] = []
    new_kind: list[Scored] = []
    for k, kind in enumerate(kinds):
        router = _trained(
            shipped,
            [e for e, f in zip(served, ninth, strict=True) if f != k],
            [o.description for o in unserved if o.unserved_task != kind],
        )
        new_in += [
            _score(router, e.description, e.domain, lang)
            for e, f, lang in zip(served, ninth, served_langs, strict=True)
            if f == k
        ]
        new_kind += [
            _score(router, o.description, None, str(o.language))
            for o in unserved
            if o.unserved_task == kind
        ]

    # 3. thresholds and what they refuse
    cal_in = [
        _score(shipped, e.description, e.domain, lang)
        for e, lang in zip(
            read_examples(DEFAULT_IN_SCOPE_CALIBRATION),
            _languages(DEFAULT_IN_SCOPE_CALIBRATION),
            strict=True,
        )
    ]
    cal_out = [
        _score(shipped, o.description, None, str(o.language))
        for o in read_out_of_scope(DEFAULT_OUT_OF_SCOPE_CALIBRATION)
    ]

    def diffs(scored: list[Scored]) -> list[float]:
        return [b - r for b, r, _ in scored]

    ceiling = 0.01
    choices = {
        "shipped (calibration sets)": shipped.threshold,
        "out-of-fold": choose_threshold(
            diffs(oof_in), diffs(oof_out), max_in_scope_refused=ceiling
        ).threshold,
        "out-of-fold + calibration": choose_threshold(
            diffs(oof_in + cal_in), diffs(oof_out + cal_out), max_in_scope_refused=ceiling
        ).threshold,
        "unseen kinds + their folds": choose_threshold(
            diffs(new_in), diffs(new_kind), max_in_scope_refused=ceiling
        ).threshold,
    }
    print(
        f"Refusal threshold by cross-validation on training data ({len(served)} served, "
        f"{len(unserved)} unserved in {len(kinds)} kinds; {args.folds} folds; calibration "
        f"{len(cal_in)} served / {len(cal_out)} unserved; no held-out set read; "
        f"{time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f})"
    )
    print(
        f"  {'threshold chosen on':28} {'value':>8} | {'refused:':8} {'oof in':>7} "
        f"{'oof out':>7} {'new-kind':>8} {'cal in':>7} {'cal out':>7}"
    )
    for name, threshold in choices.items():
        print(
            f"  {name:28} {threshold:+8.4f} | {'':8} {_refused(oof_in, threshold):7.3f} "
            f"{_refused(oof_out, threshold):7.3f} {_refused(new_kind, threshold):8.3f} "
            f"{_refused(cal_in, threshold):7.3f} {_refused(cal_out, threshold):7.3f}"
        )
    print("  unseen kinds refused per language, at each threshold:")
    languages = sorted({lang for _, _, lang in new_kind})
    print(f"  {'':28} {'':8}   " + " ".join(f"{lang:>5}" for lang in languages))
    for name, threshold in choices.items():
        shares = [_refused([s for s in new_kind if s[2] == lang], threshold) for lang in languages]
        print(f"  {name:28} {threshold:+8.4f}   " + " ".join(f"{v:5.2f}" for v in shares))

    # 4. other weightings of the two Q-values, at the same share of served refused
    print("  best - alpha * refuse: unseen kinds refused where out-of-fold served refused is")
    print(f"  {'alpha':>8} " + " ".join(f"{q:>7.0%}" for q in (0.01, 0.02, 0.03, 0.05)))
    for alpha in (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0):
        ranked = sorted(b - alpha * r for b, r, _ in new_in)
        row = []
        for share in (0.01, 0.02, 0.03, 0.05):
            threshold = ranked[int(share * len(ranked))]
            row.append(f"{_refused(new_kind, threshold, alpha):7.3f}")
        print(f"  {alpha:8.2f} " + " ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
