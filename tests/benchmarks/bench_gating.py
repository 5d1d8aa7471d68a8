"""Gating latency on the CPU and the XLM-R path's batched throughput.

Part 1 (targets: p50 <= 0.2 ms, p99 <= 1 ms per request for language + task + selection):
routes a mix of 12 languages x 4 task descriptions through the default pipeline
(fastText lid.176.ftz, the shipped hashed Q-router with its refuse head, the registry) and
prints p50/p99/mean of each stage and of the whole ``route`` call (wall clock, and the
thread's CPU time, which preemption on a loaded machine does not inflate), over
``--rounds`` passes, median of ``--repeat`` runs. Beside it, in the same run: short texts
(25 characters, the description's language weighed in), refused descriptions (the
``TaskNotServed`` path), and the task router on descriptions it has not seen (no route
cache: featurize, Q-values, refuse head).

Part 2: builds a tiny random XLM-R offline (hidden 32, 2 layers; ``--hidden``/``--layers``
to size it up) and prints texts/s of the domain classifier (domain_cls.pt v2) and the
encoder Q-router (encoder.pth + router_finance.pth) at several batch sizes. The model is
random: the figures measure the plumbing (tokenise, encode, head), not a real XLM-R-base.

    .venv/bin/python tests/benchmarks/bench_gating.py [--rounds 200] [--skip-xlmr]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests" / "gating"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib

from mole.gating import GatingError, GatingPipeline, TaskNotServed
from mole.gating.language import LanguageDetector
from tests.gating.gating_samples import DESCRIPTIONS, SENTENCES
from tests.gating.previous_short_path import PreviousShortPath
from tests.gating.test_language import EveryShortTextAsksLingua

#: descriptions of tasks nobody serves (the refusal path)
UNSERVED = (
    "Translate this text into French.",
    "Summarize this article in three sentences.",
    "Write a Python function that parses the dates.",
)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench_cpu(rounds: int) -> dict[str, dict[str, float]]:
    pipeline = GatingPipeline.load()
    # the same pipeline with fastText alone on short texts (no Lingua), and with Lingua
    # asked on every short text (the method before), for the side by side
    served = [lang.code for lang in pipeline.registry.languages]
    plain = GatingPipeline.load(detector=LanguageDetector(served, second_opinion=False))
    always = GatingPipeline.load(detector=EveryShortTextAsksLingua(served))
    # the same decisions by the short path's previous scoring (its Python work before it
    # was cut): the before/after of that change, in the same run
    before = GatingPipeline.load(detector=PreviousShortPath(served))
    jobs = []
    for desc in DESCRIPTIONS.values():
        for text in SENTENCES.values():
            try:
                pipeline.route(text, desc)
                jobs.append((text, desc))
            except GatingError:
                pass  # a task not served in that language: not a latency case
    short = []
    for text, desc in jobs:
        try:
            pipeline.route(text[:25], desc)
            always.route(text[:25], desc)  # loads its Lingua models (shared with pipeline's)
            short.append((text[:25], desc))
        except GatingError:
            pass  # cut to 25 characters, a few read as a language the task does not serve
    refused = [(text, desc) for text in SENTENCES.values() for desc in UNSERVED]
    for text, desc in refused:
        try:
            pipeline.route(text, desc)
        except TaskNotServed:
            continue
        raise SystemExit(f"not refused, so not a refusal benchmark: {desc!r}")
    stages: dict[str, list[float]] = {
        "language": [],
        "task": [],
        "select": [],
        "route": [],
        "route_cpu": [],
        "short": [],
        "short_before": [],
        "short_ft": [],
        "short_all": [],
        "refused": [],
        "task_new": [],
    }
    lang = pipeline.detector
    router = pipeline.router
    reg = pipeline.registry
    for round_ in range(rounds):
        for text, desc in jobs:
            t0 = time.perf_counter()
            d = lang.detect(text, desc)
            t1 = time.perf_counter()
            r = router.route(desc, "finance")
            t2 = time.perf_counter()
            reg.resolve(f"finance/{r.task}", d.language.code)
            t3 = time.perf_counter()
            c3 = time.thread_time()
            pipeline.route(text, desc)
            c4 = time.thread_time()
            t4 = time.perf_counter()
            stages["route_cpu"].append(c4 - c3)
            stages["language"].append(t1 - t0)
            stages["task"].append(t2 - t1)
            stages["select"].append(t3 - t2)
            stages["route"].append(t4 - t3)
        # each variant routes the whole short set in turn (the order rotating round by
        # round), as a process serving short texts runs one pipeline: alternating four
        # pipelines text by text would have each evict the others' Lingua and fastText
        # data from the CPU caches and time that instead
        variants = [
            ("short", pipeline),
            ("short_before", before),
            ("short_ft", plain),
            ("short_all", always),
        ]
        shift = round_ % len(variants)
        for stage, variant in variants[shift:] + variants[:shift]:
            for text, desc in short:
                t0 = time.perf_counter()
                with contextlib.suppress(GatingError):
                    variant.route(text, desc)
                stages[stage].append(time.perf_counter() - t0)
        for text, desc in refused:
            t0 = time.perf_counter()
            with contextlib.suppress(TaskNotServed):
                pipeline.route(text, desc)
            stages["refused"].append(time.perf_counter() - t0)
        for desc in DESCRIPTIONS.values():
            fresh = f"{desc} #{len(stages['task_new'])}"  # never routed before
            t0 = time.perf_counter()
            router.route(fresh, "finance")
            stages["task_new"].append(time.perf_counter() - t0)
    return {
        name: {
            "p50_ms": pct(v, 0.5) * 1e3,
            "p99_ms": pct(v, 0.99) * 1e3,
            "mean_ms": statistics.fmean(v) * 1e3,
            "n": len(v),
        }
        for name, v in stages.items()
    }


def bench_xlmr(
    hidden: int, layers: int, batches: list[int], n_texts: int, threads: int
) -> list[dict]:
    import torch
    import transformers
    from tiny_xlmr import build_tiny_xlmr

    from mole.gating.domain import XLMRDomainClassifier
    from mole.gating.encoder_router import EncoderQRouter

    # NOTE: on a shared 2-core machine, 2 intra-op threads made batch 32 8x slower than 1
    torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-xlmr-"))
    enc_dir = build_tiny_xlmr(
        tmp / "enc", extra_texts=SENTENCES.values(), hidden=hidden, layers=layers
    )
    c = 2
    torch.save(
        {
            "format_version": 2,
            "model_name": "tiny",
            "domains": ["finance", "general"],
            "classifier": {"1.weight": torch.randn(c, hidden), "1.bias": torch.zeros(c)},
            "prototypes_t": torch.randn(c, hidden),
            "max_len": 128,
            "alpha_proto": 0.3,
            "proto_temp": 10.0,
            "is_ready": True,
        },
        tmp / "domain_cls.pt",
    )
    config = transformers.AutoConfig.from_pretrained(enc_dir, local_files_only=True)
    enc = transformers.XLMRobertaModel(config)
    torch.save({f"model.{k}": v for k, v in enc.state_dict().items()}, tmp / "encoder.pth")
    net = torch.nn.Sequential(
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4)
    )
    torch.save({f"net.{k}": v for k, v in net.state_dict().items()}, tmp / "router_finance.pth")

    clf = XLMRDomainClassifier.load(tmp, encoder_dir=enc_dir)
    qr = EncoderQRouter.load(
        tmp, {"finance": ["rating", "pii", "news", "esci"]}, encoder_dir=enc_dir
    )
    pairs = [(d, t) for d in DESCRIPTIONS.values() for t in SENTENCES.values()]
    pairs = (pairs * (n_texts // len(pairs) + 1))[:n_texts]
    rows = []
    for bs in batches:
        for name, fn in (
            ("domain_classifier", lambda chunk: clf.predict_batch(chunk)),
            ("encoder_router", lambda chunk: qr.route_batch([d for d, _ in chunk], "finance")),
        ):
            fn(pairs[:bs])  # warm-up
            t0 = time.perf_counter()
            for i in range(0, len(pairs), bs):
                fn(pairs[i : i + bs])
            dt = time.perf_counter() - t0
            rows.append({"path": name, "batch": bs, "texts_per_s": len(pairs) / dt})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-xlmr", action="store_true")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()

    runs = [bench_cpu(args.rounds) for _ in range(args.repeat)]
    print(
        f"CPU gating latency (median of {args.repeat} runs; "
        f"{runs[0]['route']['n']} routes, {runs[0]['short']['n']} short, "
        f"{runs[0]['refused']['n']} refused per run; targets p50 <= 0.2 ms, p99 <= 1 ms; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    print(f"  {'stage':<10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for stage in (
        "language",
        "task",
        "select",
        "route",
        "route_cpu",
        "short",
        "short_before",
        "short_ft",
        "short_all",
        "refused",
        "task_new",
    ):
        p50 = statistics.median(r[stage]["p50_ms"] for r in runs)
        p99 = statistics.median(r[stage]["p99_ms"] for r in runs)
        mean = statistics.median(r[stage]["mean_ms"] for r in runs)
        print(f"  {stage:<10} {p50:8.4f} {p99:8.4f} {mean:8.4f}")
    ok = (
        statistics.median(r["route"]["p50_ms"] for r in runs) <= 0.2
        and statistics.median(r["route"]["p99_ms"] for r in runs) <= 1.0
    )
    print(f"  route (language + domain + task + selection) meets the targets: {ok}")
    print(
        "  (route_cpu: this thread's CPU time per route, which a loaded machine's "
        "preemption does not inflate; short: route of a 25-character text, the "
        "description's language weighed in and Lingua where fastText is not sure; short_before: "
        "the same decisions by the short path's previous scoring (Python work before it was "
        "cut); short_ft: the same without Lingua (fastText alone); short_all: Lingua asked "
        "on every short text (the method before); the four short variants each route the "
        "whole short set in turn, in an order rotating per round; refused: route ending in "
        "TaskNotServed; "
        "task_new: the task router alone on a description it has not seen)"
    )

    if not args.skip_xlmr:
        batches = [int(b) for b in args.batches.split(",")]
        rows = bench_xlmr(args.hidden, args.layers, batches, args.texts, args.threads)
        print(
            f"\nXLM-R path, tiny random model (hidden {args.hidden}, {args.layers} layers), "
            f"{args.texts} texts, torch threads {args.threads}, "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        print(f"  {'path':<18} {'batch':>5} {'texts/s':>10}")
        for r in rows:
            print(f"  {r['path']:<18} {r['batch']:>5} {r['texts_per_s']:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
