"""Worker inference: the original service's approach against ours, same model, same run.

64 queued news classifications on a ~25 M-parameter tiny Mistral (random weights, CPU):

- original (original-mole.md §5): one request at a time, ``set_adapter`` per request,
  greedy ``generate`` of up to 25 new tokens with scores, then matching the text to a label.
  A random-weight model never emits EOS, so every request generates all 25 tokens; a real
  model often stops sooner, so we also time the same path capped at 4 new tokens (a model
  that stops right after the label) as the original's best case.
- ours: the BatchingHandler: dynamic batches (sub-batches of similar length), label scoring
  with the template's instruction prefix cached per adapter, each prompt computed once and
  the label continuations from its cache.

Run:  .venv/bin/python tests/benchmarks/bench_worker.py [--requests 64] [--repeats 3]
Prints requests/s of each (median of the repeats) and the ratio (target >= 5x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

KEY = "unsloth/mistral-7b-instruct-v0.3-bnb-4bit"  # serves finance/news
LANGS = ("en", "da", "es", "pl")
TOPICS = [
    "The central bank raised interest rates again to fight inflation, surprising markets.",
    "A new cloud software platform helps factories predict machine failures.",
    "Tax authorities announced stricter reporting rules for small businesses next year.",
    "The retailer appointed a new chief executive after a difficult restructuring.",
    "Steel output rose sharply as the car industry recovered from supply problems.",
    "Regulators fined the bank for weak anti-money-laundering controls.",
    "The auditing firm updated its accounting guidance on leases and revenue.",
    "Shares of the chipmaker jumped after record quarterly earnings.",
]


def texts(n: int) -> list[str]:
    return [" ".join(TOPICS[(i + k) % len(TOPICS)] for k in range(1 + i % 3)) for i in range(n)]


def original_approach(engine, payloads, max_new_tokens: int) -> float:
    """One at a time: set_adapter, greedy generate with scores, match text to a label."""
    import torch

    model, tok = engine.loaded.model, engine.loaded.tokenizer
    labels = engine.experts[0].label_set
    t0 = time.perf_counter()
    for payload in payloads:
        job = engine.prepare(payload)
        model.set_adapter(job.adapter_key)
        ids = torch.tensor([job.prompt_ids])
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        text = tok.decode(out.sequences[0, ids.shape[1] :], skip_special_tokens=True).strip()
        _ = next(
            (lab for lab in labels if lab.lower() == text.lower()),
            next((lab for lab in labels if lab.lower() in text.lower()), "unknown"),
        )
        probs = [float(torch.softmax(s[0].float(), -1).max()) for s in out.scores]
        _ = sum(probs) / len(probs)
    return len(payloads) / (time.perf_counter() - t0)


def our_approach(engine, payloads, max_batch: int) -> tuple[float, int]:
    from mole.worker.engine.batching import BatchingHandler
    from mole.worker.handler import Responder, WorkRequest

    done = threading.Semaphore(0)
    errors = []

    class Counter(Responder):
        def partial(self, payload):
            pass

        def final(self, payload):
            done.release()

        def error(self, code, message, details=None):
            errors.append(message)
            done.release()

    handler = BatchingHandler(engine, max_batch=max_batch, batch_wait_ms=5)
    handler.start()
    try:
        t0 = time.perf_counter()
        for i, payload in enumerate(payloads):
            handler.submit(WorkRequest(f"r{i}", payload), Counter())
        for _ in payloads:
            done.acquire()
        elapsed = time.perf_counter() - t0
    finally:
        handler.close()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
    return len(payloads) / elapsed, handler.largest_batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from mole.protocol.registry import load_registry
    from mole.worker.engine.engine import Engine
    from mole.worker.engine.settings import EngineSettings
    from mole.worker.tiny import generate

    torch.set_num_threads(args.threads)
    registry = load_registry()
    with tempfile.TemporaryDirectory() as tmp:
        summary = generate(tmp, registry=registry, size="bench", keys=[KEY])
        settings = EngineSettings(
            models_dir=Path(tmp) / "models",
            adapters_dir=Path(tmp) / "adapters",
            device="cpu",
            max_batch=args.max_batch,
            torch_threads=args.threads,
        )
        engine = Engine.load(KEY, registry, settings, worker_id="bench")
    payloads = [
        {"task": "finance/news", "language": LANGS[i % len(LANGS)], "text": t}
        for i, t in enumerate(texts(args.requests))
    ]
    n_params = summary["models"][KEY] / 1e6
    tokens = [len(engine.prepare(p).prompt_ids) for p in payloads]
    print(
        f"model: tiny {KEY} ({n_params:.1f} M parameters, random weights), CPU, "
        f"{args.threads} threads; {args.requests} news requests, prompt tokens "
        f"{min(tokens)}-{max(tokens)} (median {statistics.median(tokens):.0f}), "
        f"6 labels of 1-4 tokens"
    )
    original_approach(engine, payloads[:2], 25)  # warm both paths
    our_approach(engine, payloads[:4], args.max_batch)
    orig, orig4, ours, batches = [], [], [], []
    for r in range(args.repeats):
        orig.append(original_approach(engine, payloads, 25))
        orig4.append(original_approach(engine, payloads, 4))
        rps, largest = our_approach(engine, payloads, args.max_batch)
        ours.append(rps)
        batches.append(largest)
        print(
            f"  run {r + 1}: original {orig[-1]:.2f} req/s, original capped at 4 tokens "
            f"{orig4[-1]:.2f} req/s, ours {ours[-1]:.2f} req/s (largest batch {largest})"
        )
    m_orig, m_orig4, m_ours = (statistics.median(x) for x in (orig, orig4, ours))
    print(f"original (one at a time, greedy generate, 25 new tokens): {m_orig:8.2f} req/s")
    print(f"original, best case (stops after 4 new tokens):           {m_orig4:8.2f} req/s")
    print(f"ours (batched label scoring, cached prefix and prompt):   {m_ours:8.2f} req/s")
    print(
        f"ratio ours/original: {m_ours / m_orig:.1f}x  (vs best case: {m_ours / m_orig4:.1f}x;"
        f" target >= 5x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
