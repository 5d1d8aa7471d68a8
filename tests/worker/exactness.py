"""Label probabilities of an independent reference, and the cache on/off comparison.

The reference is written here from the definition, not from the engine's scorer: the whole
prompt text followed by the answer prefix and the label is tokenised in one piece, a plain
transformers model (with the expert's LoRA through peft's own ``PeftModel``) runs that one
sequence, and the label's log-likelihood is the sum of its tokens' log-probabilities. The
probabilities are the softmax over the labels. Used by tests/worker/test_fidelity.py and by
tests/benchmarks/gpu_worker.py (on CUDA).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: one input per served language (and some awkward text: a newline, double spaces)
TEXTS: dict[str, str] = {
    "en": "Review of the new savings account: fees are low and support answers quickly.",
    "de": "Die Bank hat die Gebühren erhöht.\nDer Service ist trotzdem gut.",
    "fr": "Le service client était lent  et les frais trop élevés.",
    "es": "Consulta sobre la tarjeta: la aplicación funciona muy bien.",
    "ja": "このアプリは使いやすく、手数料も安いです。",
    "zh": "客户服务很差，转账花了整整一周。",
    "nl": "De bank meldde een sterke winst.",
    "it": "La banca ha registrato utili record.",
    "sv": "Banken rapporterade en stark vinst.",
    "da": "Banken rapporterede et stærkt overskud.",
    "pl": "Bank odnotował rekordowy zysk.",
    "tr": "İSTANBUL ŞUBESİ müşterilere yeni kredi sundu.",
}


@dataclass(frozen=True, slots=True)
class BoundaryMismatch:
    """The whole text tokenises differently at the prompt → label boundary."""

    prompt_ids: list[int]
    whole_ids: list[int]


def whole_prompt_label_ids(
    tokenizer: Any, prompt_text: str, answer_prefix: str, label: str
) -> tuple[list[int], list[int]]:
    """(prompt ids, label ids) cut from the one-piece tokenisation of prompt + label.

    Raises:
        AssertionError: the one-piece tokenisation does not start with the prompt's own.
    """
    prompt_ids = tokenizer(prompt_text, add_special_tokens=True)["input_ids"]
    whole = tokenizer(prompt_text + answer_prefix + label, add_special_tokens=True)["input_ids"]
    assert whole[: len(prompt_ids)] == prompt_ids, BoundaryMismatch(prompt_ids, whole)
    return prompt_ids, whole[len(prompt_ids) :]


class Reference:
    """Plain transformers + peft, loaded from the directories on its own."""

    def __init__(self, model_dir: Path, device: str = "cpu", dtype: Any = torch.float32) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        base: Any = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, local_files_only=True
        )
        self.base = base.to(device).eval()
        self.device = device
        self._with_adapter: dict[Path, Any] = {}

    def model_for(self, adapter_dir: Path | None) -> Any:
        """The base model, or a PeftModel wrapping a copy of it with one adapter."""
        from peft import PeftModel

        if adapter_dir is None:
            return self.base
        if adapter_dir not in self._with_adapter:
            wrapped = PeftModel.from_pretrained(copy.deepcopy(self.base), str(adapter_dir))
            self._with_adapter[adapter_dir] = wrapped.eval()
        return self._with_adapter[adapter_dir]

    @torch.inference_mode()
    def probabilities(
        self,
        adapter_dir: Path | None,
        prompt_text: str,
        answer_prefix: str,
        labels: tuple[str, ...],
    ) -> dict[str, float]:
        """Softmax over labels of log P(label tokens | whole prompt), one sequence each."""
        model = self.model_for(adapter_dir)
        scores = []
        for label in labels:
            prompt_ids, label_ids = whole_prompt_label_ids(
                self.tokenizer, prompt_text, answer_prefix, label
            )
            ids = torch.tensor([prompt_ids + label_ids], device=self.device)
            # logits of the last len(label)+1 positions: row t predicts label token t
            logits = model(input_ids=ids, logits_to_keep=len(label_ids) + 1).logits[0]
            logp = torch.log_softmax(logits.float(), dim=-1)
            scores.append(sum(float(logp[t, tok]) for t, tok in enumerate(label_ids)))
        probs = torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=0).tolist()
        return dict(zip(labels, probs, strict=True))


def payload(expert: Any, text: str) -> dict[str, Any]:
    """A request for ``expert`` with ``text`` (ESCI: the text is the query)."""
    body: dict[str, Any] = {
        "task": expert.task_key,
        "adapter": expert.adapter_name,
        "text": text,
        "options": {"return_probabilities": True},
    }
    if expert.task == "esci":
        body.update(query=text[:40], product=text)
    return body


def max_cache_delta(cached: Any, plain: Any, texts: dict[str, str] | None = None) -> float:
    """Largest |probability difference| between two engines over every classification
    expert of ``cached`` and every text."""
    worst = 0.0
    for expert in cached.experts:
        if expert.kind != "classification":
            continue
        jobs_on = [cached.prepare(payload(expert, t)) for t in (texts or TEXTS).values()]
        jobs_off = [plain.prepare(payload(expert, t)) for t in (texts or TEXTS).values()]
        for on, off in zip(cached.run(jobs_on), plain.run(jobs_off), strict=True):
            for label, p in off["probabilities"].items():
                worst = max(worst, abs(on["probabilities"][label] - p))
    return worst


@dataclass(frozen=True, slots=True)
class ExactnessRow:
    """One base model: worst |Δprobability| of cache on vs off, and engine vs reference."""

    key: str
    family: str
    cache_delta: float
    reference_delta: float


def registry_in_dtype(registry: Any, dtype: str) -> Any:
    """The registry with every base model loaded in ``dtype`` (float32 for exactness)."""
    from mole.protocol.registry import parse_registry

    raw = copy.deepcopy(registry.raw)
    for spec in raw["base_models"].values():
        spec["dtype"] = dtype
        spec["load_in_4bit"] = False
    return parse_registry(raw, path=registry.path)


def exactness_report(
    root: Path, registry: Any, device: str, texts: dict[str, str] | None = None
) -> list[ExactnessRow]:
    """For each base model of ``registry`` built under ``root`` (tiny, real tokenizers):
    engine probabilities with the cache on and off against the reference, on ``device``."""
    from mole.worker.engine.engine import Engine
    from mole.worker.engine.settings import EngineSettings

    texts = texts or {k: TEXTS[k] for k in ("de", "ja", "tr")}
    rows = []
    for key, spec in registry.base_models.items():
        engines = {}
        for cache in (True, False):
            settings = EngineSettings(
                models_dir=root / "models",
                adapters_dir=root / "adapters",
                device=device,
                prefix_cache=cache,
                warmup=False,
                keep_dtype=True,
            )
            engines[cache] = Engine.load(key, registry, settings)
        model_dtype = engines[True].loaded.model.get_base_model().dtype
        reference = Reference(root / "models" / key, device=device, dtype=model_dtype)
        worst_ref = 0.0
        for expert in engines[True].experts:
            if expert.kind != "classification":
                continue
            jobs = [engines[True].prepare(payload(expert, t)) for t in texts.values()]
            for job, reply in zip(jobs, engines[True].run(jobs), strict=True):
                want = reference.probabilities(
                    root / "adapters" / expert.adapter_path,
                    job.prompt_text,
                    job.prompt.template.answer_prefix,
                    expert.label_set,
                )
                for label, p in want.items():
                    worst_ref = max(worst_ref, abs(reply["probabilities"][label] - p))
        cache_delta = max_cache_delta(engines[True], engines[False], texts)
        rows.append(ExactnessRow(key, spec.family, cache_delta, worst_ref))
        for engine in engines.values():
            engine.close()
    return rows
