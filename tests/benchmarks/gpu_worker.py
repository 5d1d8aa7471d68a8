"""GPU check of the worker engine on a 7B-shaped model: label scoring against generation.

Builds a randomly initialised Llama with Llama-2-7B's shape (4096 hidden, 32 layers, 11008
intermediate, 32 heads, vocabulary 32000) straight from its config, so nothing is
downloaded; adds two LoRA adapters (r=16 on q/k/v/o/gate/up/down, as the registry's
adapters); then, in fp16 and in nf4 (bitsandbytes), measures classifications per second at
batch 1, 8 and 32 for:

- scoring: worker.engine.scoring.score_batch (prompt once, label continuations from the
  cache), mixed adapters per batch, on the news task's six labels (1-4 tokens each);
- generation: greedy generate of 25 new tokens (what the original service did per request).

Before that, the exactness check of tests/worker/test_fidelity.py runs on the device: tiny
models of every registry base model on their families' real tokenizers (from packages),
label probabilities with the instruction cache on and off against a plain transformers +
peft whole-prompt reference, in float32 (must agree within 1e-5) and, on CUDA, in float16
(reported). ``--skip-exactness`` leaves it out.

Prints tables. Skips cleanly (exit 0) without CUDA. Finishes in under 5 minutes on an H100
(a time guard skips remaining cells past --budget seconds). ``--smoke-cpu`` runs the same
code on a tiny config on CPU, to check the script without a GPU.

Run:  python tests/benchmarks/gpu_worker.py
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

LABELS = (
    "Business & Management",
    "Finance",
    "Government & Controls",
    "Technology",
    "Industry",
    "Tax & Accounting",
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NEWS = (
    "The central bank raised interest rates again to fight inflation, surprising "
    "markets. Analysts expect further increases as wage growth stays strong and the "
    "currency weakens against the dollar. "
)


def build_model(precision: str, device: str, smoke: bool):
    """A random-weight Llama of 7B shape (or tiny for --smoke-cpu) in fp16 or nf4."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if smoke:
        config = LlamaConfig(
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=32000,
        )
    else:
        config = LlamaConfig(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32000,
            max_position_embeddings=4096,
        )
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in fp16 directly: no 28 GB fp32 detour on the GPU
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    if precision == "nf4":
        quantize_nf4(model, dtype, device)
    return model


def quantize_nf4(model, compute_dtype, device: str) -> None:
    """Swap every decoder nn.Linear for a bitsandbytes nf4 Linear4bit (lm_head stays)."""
    import bitsandbytes as bnb
    import torch

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if not isinstance(child, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=False,
                    compute_dtype=compute_dtype,
                    quant_type="nf4",
                    device="meta",
                )
                q.weight = bnb.nn.Params4bit(
                    child.weight.data, requires_grad=False, quant_type="nf4"
                )
                q = q.to(device)
                setattr(parent, name, q)
                del child
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def add_adapters(model):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM", init_lora_weights=False
    )
    peft_model = get_peft_model(model, config, adapter_name="a0")
    peft_model.add_adapter("a1", config)
    peft_model.eval()
    return peft_model


def timeit(fn, budget_s: float, min_iters: int = 2) -> float:
    """Seconds per call: one warm-up call, then repeats until ~budget_s."""
    import torch

    fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    iters, t0 = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - t0 < budget_s:
        fn()
        sync()
        iters += 1
    return (time.perf_counter() - t0) / iters


def padding_check(model, tokenizer, prompt, label_ids, precision) -> None:
    """Left-padded mixed-length, mixed-adapter batch against one request at a time."""
    from mole.worker.engine.scoring import (
        ScoreRow,
        accepts_position_ids,
        probabilities,
        score_batch,
    )

    use_pos = accepts_position_ids(model)
    rows = [ScoreRow(prompt[: len(prompt) - 37 * i], label_ids, f"a{i % 2}") for i in range(4)]
    batched = score_batch(model, rows, 0, use_positions=use_pos)
    worst_p = worst_ll = 0.0
    for row, got in zip(rows, batched, strict=True):
        alone = score_batch(model, [row], 0, use_positions=use_pos)[0]
        p, q = probabilities(got), probabilities(alone)
        worst_p = max(worst_p, max(abs(a - b) for a, b in zip(p, q, strict=True)))
        worst_ll = max(worst_ll, max(abs(a - b) for a, b in zip(got, alone, strict=True)))
    nan = any(x != x for row in batched for x in row)
    print(
        f"{precision}: padded mixed batch vs one at a time: max difference "
        f"{worst_ll:.2e} in label log-likelihood, {worst_p:.2e} in probability"
        f"{' (NaN!)' if nan else ''}"
    )


def measure(model, tokenizer, precision, prompt, label_ids, over_budget, cell_seconds):
    """(precision, batch, method, classifications/s | "OOM" | None) for each cell."""
    import torch

    from mole.worker.engine.generation import GenRow, generate_batch
    from mole.worker.engine.scoring import ScoreRow, accepts_position_ids, score_batch

    use_pos = accepts_position_ids(model)
    rows_out = []
    for batch in (1, 8, 32):
        adapters = [f"a{i % 2}" for i in range(batch)]
        score_rows = [ScoreRow(prompt, label_ids, a) for a in adapters]
        gen_rows = [GenRow(prompt, a, {"max_new_tokens": 25, "temperature": 0.0}) for a in adapters]
        cells = (
            ("scoring", lambda r=score_rows: score_batch(model, r, 0, use_positions=use_pos)),
            ("generate-25", lambda r=gen_rows: generate_batch(model, tokenizer, r)),
        )
        for method, fn in cells:
            if over_budget():
                rows_out.append((precision, batch, method, None))
                continue
            try:
                rows_out.append((precision, batch, method, batch / timeit(fn, cell_seconds)))
            except torch.OutOfMemoryError:
                rows_out.append((precision, batch, method, "OOM"))
                torch.cuda.empty_cache()
    return rows_out


def exactness(device: str) -> bool:
    """The fidelity check on ``device``; prints a table, returns whether float32 agreed."""
    import tempfile

    from mole.protocol.registry import load_registry
    from mole.worker.tiny import generate
    from tests.worker.exactness import exactness_report, registry_in_dtype
    from tests.worker.realtokenizers import real_tokenizers

    t0 = time.perf_counter()
    passed = True
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, size="narrow", tokenizers=real_tokenizers())
        print(f"exactness: tiny real-tokenizer models built in {time.perf_counter() - t0:.0f} s")
        print(
            f"{'dtype':<9}{'family':<9}{'base model':<44}{'cache on/off':>13}{'vs reference':>14}"
        )
        for dtype in ("float32", "float16") if device == "cuda" else ("float32",):
            registry = registry_in_dtype(load_registry(), dtype)
            for row in exactness_report(Path(tmp), registry, device):
                ok = max(row.cache_delta, row.reference_delta) < 1e-5
                passed = passed and (ok or dtype != "float32")
                print(
                    f"{dtype:<9}{row.family:<9}{row.key:<44}{row.cache_delta:>13.2e}"
                    f"{row.reference_delta:>14.2e}{'' if ok or dtype != 'float32' else '  FAIL'}"
                )
    print(f"exactness: {'PASS' if passed else 'FAIL'} in {time.perf_counter() - t0:.0f} s\n")
    return passed


def main() -> int:
    parser = argparse.ArgumentParser(description="7B-shaped label scoring vs generation")
    parser.add_argument("--smoke-cpu", action="store_true", help="tiny config on CPU")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for all cells")
    parser.add_argument("--cell-seconds", type=float, default=3.0)
    parser.add_argument("--skip-exactness", action="store_true", help="throughput only")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.smoke_cpu:
        print(
            "SKIP: CUDA is not available (this benchmark needs a GPU; --smoke-cpu checks "
            "the script on CPU)"
        )
        return 0
    device = "cuda" if torch.cuda.is_available() and not args.smoke_cpu else "cpu"
    from mole.worker.engine.engine import label_token_ids
    from mole.worker.engine.templates import load_template, render_within
    from mole.worker.tiny import build_tokenizer

    started = time.perf_counter()
    exact = True if args.skip_exactness else exactness(device)
    root = Path(__file__).resolve().parents[2]
    tokenizer = build_tokenizer()  # offline BPE; its ids are valid in a 32000 vocabulary
    template = load_template(root / "configs/templates/news.json", "llama-2-7b-hf", "llama2")
    label_ids = label_token_ids(tokenizer, template, LABELS)
    prompt = render_within(template, {"input": NEWS * 2}, tokenizer, 1024).input_ids
    name = (
        torch.cuda.get_device_name(0)
        if device == "cuda"
        else "CPU (smoke test: tiny config, 'fp16' rows run in float32)"
    )
    print(
        f"device: {name}; prompt {len(prompt)} tokens; labels {[len(x) for x in label_ids]}"
        " tokens; 2 LoRA adapters mixed per batch; random weights"
    )
    rows_out = []
    for precision in ("fp16", "nf4"):
        if time.perf_counter() - started > args.budget:
            print(f"budget spent: skipping {precision}")
            break
        t0 = time.perf_counter()
        model = add_adapters(build_model(precision, device, args.smoke_cpu))
        mem = torch.cuda.memory_allocated() / 2**30 if device == "cuda" else 0.0
        print(f"{precision}: built in {time.perf_counter() - t0:.1f} s, {mem:.1f} GiB allocated")
        padding_check(model, tokenizer, prompt, label_ids, precision)
        rows_out += measure(
            model,
            tokenizer,
            precision,
            prompt,
            label_ids,
            lambda: time.perf_counter() - started > args.budget,
            args.cell_seconds,
        )
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    print()
    print(f"{'precision':<10}{'batch':>6}  {'method':<12}{'classifications/s':>20}")
    for precision, batch, method, value in rows_out:
        shown = "skipped" if value is None else value if isinstance(value, str) else f"{value:.1f}"
        print(f"{precision:<10}{batch:>6}  {method:<12}{shown:>20}")
    by = {(p, b, m): v for p, b, m, v in rows_out if isinstance(v, float)}
    for precision in ("fp16", "nf4"):
        for batch in (1, 8, 32):
            s, g = by.get((precision, batch, "scoring")), by.get((precision, batch, "generate-25"))
            if s and g:
                print(f"{precision} batch {batch}: scoring/generation = {s / g:.1f}x")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
