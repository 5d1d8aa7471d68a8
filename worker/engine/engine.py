"""One loaded base model serving its experts: validate payloads, run batches, build replies.

:class:`Engine` is what both the worker's batching handler and the single-machine pool
drive. :meth:`Engine.prepare` validates a payload and renders its prompt (raising
:class:`InvalidPayload` naming the field); :meth:`Engine.run` computes a list of prepared
jobs together, mixing adapters and tasks in one forward pass, and returns each job's
reply payload or its own exception, so one bad job never fails its batch-mates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mole.protocol.errors import DeadlineExceeded
from mole.protocol.registry import ExpertSpec, ExpertsRegistry, language, load_registry
from mole.worker.engine.errors import EngineClosed, InvalidPayload, ModelLoadError
from mole.worker.engine.esci import query_and_product
from mole.worker.engine.generation import GenRow, generate_batch
from mole.worker.engine.loading import LoadedModel, load_base_model, preflight
from mole.worker.engine.pii import parse_pii
from mole.worker.engine.prefix import shared_prefix
from mole.worker.engine.scoring import (
    PrefixKV,
    ScoreRow,
    accepts_position_ids,
    compute_prefix,
    probabilities,
    score_batch,
)
from mole.worker.engine.settings import EngineSettings
from mole.worker.engine.templates import Template, load_template, render_within

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("mole.worker.engine")

MAX_TEXT_CHARS = 200_000  # a sanity bound before tokenizing; the real limit is in tokens


@dataclass(slots=True)
class PromptSpec:
    """A task's template for this model and its label token sequences."""

    template: Template
    labels: tuple[str, ...]
    label_ids: list[list[int]]
    single_token: bool  # every label is one distinct token: the one-pass path applies
    key: tuple[str, Path]  # (task key, template path): one spec per pair
    prefix_text: str = ""  # the fixed instruction up to the line of the first placeholder
    #: the tokens every prompt of the template starts with (engine/prefix.py); cached
    prefix_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Job:
    """A validated request, ready to compute."""

    expert: ExpertSpec
    prompt: PromptSpec
    adapter_key: str | None
    prompt_ids: list[int]  # the whole rendered prompt, tokenised in one piece
    truncated: bool
    input_text: str
    options: dict[str, bool]
    request_id: str = ""
    received_at: float = field(default_factory=time.monotonic)
    max_new_tokens: int | None = None  # overrides the registry's (warm-up uses a few)
    deadline: float | None = None  # time.monotonic() after which nobody wants the answer
    prompt_text: str = ""  # the rendered prompt ``prompt_ids`` are the tokens of


def label_token_ids(
    tokenizer: PreTrainedTokenizerBase, template: Template, labels: tuple[str, ...]
) -> list[list[int]]:
    """Token ids of each label as it continues the template's answer cue.

    Tokenizing ``cue + prefix + label`` and removing the cue's tokens gives the ids the
    model sees after the prompt (a label tokenized alone can split differently).
    """
    cue = template.answer_cue
    cue_ids = tokenizer(cue, add_special_tokens=False)["input_ids"] if cue else []
    result: list[list[int]] = []
    for label in labels:
        text = template.answer_prefix + label
        full = tokenizer(cue + text, add_special_tokens=False)["input_ids"]
        if cue_ids and full[: len(cue_ids)] == cue_ids and len(full) > len(cue_ids):
            ids = full[len(cue_ids) :]
        else:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ModelLoadError(f"label {label!r} tokenizes to nothing")
        result.append(ids)
    return result


def length_buckets(
    indices: list[int], lengths: dict[int, int], max_batch: int, max_padding: float = 0.25
) -> list[list[int]]:
    """Split a batch into sub-batches of similar prompt length.

    Rows are left-padded to the longest prompt of their sub-batch; sorting by length and
    starting a new sub-batch when padding would exceed ``max_padding`` of the real tokens
    keeps compute for pad tokens small (on CPU, a third of a batch's work otherwise).
    """
    order = sorted(indices, key=lambda i: lengths[i])
    buckets: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in order:
        n = lengths[i]  # the longest so far, since sorted
        if current and (
            len(current) >= max_batch or n * (len(current) + 1) > (1 + max_padding) * (total + n)
        ):
            buckets.append(current)
            current, total = [], 0
        current.append(i)
        total += n
    if current:
        buckets.append(current)
    return buckets


class Engine:
    """A base model, its adapters and the experts (task, language) it serves."""

    def __init__(
        self,
        base_model_key: str,
        registry: ExpertsRegistry,
        loaded: LoadedModel,
        settings: EngineSettings,
        worker_id: str = "",
    ) -> None:
        self.base_model_key = base_model_key
        self.spec = registry.base_models[base_model_key]
        self.registry = registry
        self.loaded = loaded
        self.settings = settings
        self.worker_id = worker_id
        self.experts = registry.experts_for_base_model(base_model_key)
        self._by_task: dict[str, dict[str, ExpertSpec]] = {}
        self._by_adapter: dict[str, ExpertSpec] = {}
        for expert in self.experts:
            self._by_task.setdefault(expert.task_key, {})[expert.language.code] = expert
            self._by_adapter[expert.adapter_name] = expert
        self._prompts: dict[tuple[str, Path], PromptSpec] = {}
        for expert in self.experts:
            self._prompt_for(expert)
        self._use_positions = accepts_position_ids(loaded.model)
        # (prompt spec key, loaded adapter name) -> that template's instruction prefix cache
        self._prefix_kv: dict[tuple[tuple[str, Path], str | None], PrefixKV | None] = {}
        self._lock = threading.Lock()  # one forward pass at a time on this model

    # ---- loading -------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        base_model_key: str,
        registry: ExpertsRegistry | None = None,
        settings: EngineSettings | None = None,
        worker_id: str = "",
    ) -> Engine:
        """Load the model and every adapter the registry assigns to it, then warm up.

        Raises:
            ModelLoadError: the key is not in the registry, or something cannot be loaded.
        """
        registry = registry or load_registry()
        settings = settings or EngineSettings()
        spec, experts = preflight(base_model_key, registry, settings)
        loaded = load_base_model(spec, experts, settings)
        engine = cls(base_model_key, registry, loaded, settings, worker_id)
        if settings.warmup:
            engine.warm_up()
        return engine

    def _prompt_for(self, expert: ExpertSpec) -> PromptSpec:
        key = (expert.task_key, expert.template_path)
        spec = self._prompts.get(key)
        if spec is None:
            template = load_template(expert.template_path, self.base_model_key, self.spec.family)
            tok = self.loaded.tokenizer
            if expert.kind == "classification":
                ids = label_token_ids(tok, template, expert.label_set)
                firsts = [x[0] for x in ids]
                single = all(len(x) == 1 for x in ids) and len(set(firsts)) == len(firsts)
                if len({tuple(x) for x in ids}) != len(ids):
                    raise ModelLoadError(
                        f"task {expert.task_key}: two labels tokenize identically with "
                        f"{self.base_model_key}'s tokenizer"
                    )
            else:
                ids, single = [], False
            spec = PromptSpec(template, expert.label_set, ids, single, key)
            if self.settings.prefix_cache and expert.kind == "classification":
                spec.prefix_text, spec.prefix_ids = shared_prefix(template, tok)
            self._prompts[key] = spec
            log.info(
                "task %s: template %s, %s",
                expert.task_key,
                template.source,
                "single-token labels (one pass)"
                if single
                else "multi-token labels (cached prompt + continuations)"
                if expert.kind == "classification"
                else "generation",
            )
        return spec

    def warm_up(self) -> None:
        """Run one request per task so the first real request pays no one-off costs."""
        t0 = time.perf_counter()
        jobs = []
        for task_key, by_lang in self._by_task.items():
            expert = next(iter(by_lang.values()))
            payload = {
                "task": task_key,
                "adapter": expert.adapter_name,
                "text": "Warm-up request. Query: test Product: test",
                "query": "test",
                "product": "test",
            }
            job = self.prepare(payload)
            job.max_new_tokens = 4
            jobs.append(job)
        for job, outcome in zip(jobs, self.run(jobs, warmup=True), strict=True):
            if isinstance(outcome, Exception):
                raise ModelLoadError(
                    f"warm-up of {job.expert.task_key} failed: {outcome}"
                ) from outcome
        log.info("warm-up done (%d tasks) in %.2f s", len(jobs), time.perf_counter() - t0)

    # ---- what this engine serves -------------------------------------------------------
    @property
    def tiny(self) -> bool:
        return self.loaded.tiny

    def metadata(self) -> dict[str, Any]:
        """The READY metadata (docs/interfaces.md) describing what this engine serves."""
        import peft
        import torch
        import transformers

        return {
            "service": self.base_model_key,
            "worker_id": self.worker_id,
            "tasks": sorted(self._by_task),
            "languages": sorted({e.language.code for e in self.experts}),
            "adapters": sorted(self._by_adapter),
            "adapter_dirs": sorted({e.adapter_path for e in self.experts}),
            "family": self.spec.family,
            "device": self.loaded.device,
            "dtype": self.loaded.dtype,
            "quantized_4bit": self.loaded.quantized,
            "tiny_model": self.loaded.tiny,
            "max_batch": self.settings.max_batch,
            "max_input_tokens": self.settings.max_input_tokens,
            "load_seconds": round(self.loaded.load_seconds, 3),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
        }

    # ---- validation --------------------------------------------------------------------
    def _resolve_expert(self, payload: dict[str, Any]) -> ExpertSpec:
        task_key = payload.get("task")
        if not isinstance(task_key, str) or not task_key:
            raise InvalidPayload("task", "required: a task key such as 'finance/rating'")
        by_lang = self._by_task.get(task_key)
        if by_lang is None:
            matches = [k for k in self._by_task if k.split("/")[-1] == task_key]
            by_lang = self._by_task[matches[0]] if len(matches) == 1 else None
        if by_lang is None:
            raise InvalidPayload(
                "task",
                f"{task_key!r} is not served by {self.base_model_key} "
                f"(serves: {', '.join(sorted(self._by_task))})",
            )
        adapter = payload.get("adapter")
        lang = payload.get("language")
        if adapter is not None and not isinstance(adapter, str):
            raise InvalidPayload("adapter", "must be a string")
        if lang is not None and not isinstance(lang, str):
            raise InvalidPayload("language", "must be a string")
        if adapter:
            expert = self._by_adapter.get(adapter)
            if expert is None or expert not in by_lang.values():
                served = sorted(e.adapter_name for e in by_lang.values())
                raise InvalidPayload(
                    "adapter",
                    f"{adapter!r} is not an adapter of task "
                    f"{next(iter(by_lang.values())).task_key} on {self.base_model_key}"
                    f" (has: {', '.join(served)})",
                )
            if lang:
                try:
                    code = language(lang).code
                except KeyError:
                    code = lang
                if code != expert.language.code:
                    raise InvalidPayload(
                        "language",
                        f"{lang!r} does not match adapter {adapter!r} ({expert.language.name})",
                    )
            return expert
        if not lang:
            raise InvalidPayload("language", "required when no adapter is named")
        try:
            code = language(lang).code
        except KeyError:
            code = lang
        expert = by_lang.get(code)
        if expert is None:
            served = sorted(e.language.name for e in by_lang.values())
            raise InvalidPayload(
                "language",
                f"{lang!r} is not served for {next(iter(by_lang.values())).task_key} "
                f"by {self.base_model_key} (serves: {', '.join(served)})",
            )
        return expert

    def prepare(self, payload: Any, request_id: str = "", received_at: float | None = None) -> Job:
        """Validate ``payload`` and render its prompt within the token budget.

        Raises:
            InvalidPayload: naming the field at fault.
        """
        if not isinstance(payload, dict):
            raise InvalidPayload("payload", f"must be a map, got {type(payload).__name__}")
        expert = self._resolve_expert(payload)
        prompt = self._prompt_for(expert)
        options = payload.get("options") or {}
        if not isinstance(options, dict):
            raise InvalidPayload("options", "must be a map")
        opts = {
            k: bool(options.get(k, False)) for k in ("return_probabilities", "return_raw_response")
        }
        values = {"language": expert.language.name}
        text = payload.get("text", "")
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise InvalidPayload("text", f"must be a string, got {type(text).__name__}")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidPayload("text", f"longer than {MAX_TEXT_CHARS} characters")
        fields = prompt.template.fields
        if "query" in fields or "product" in fields:
            query, product = query_and_product(payload, text, expert.language.code)
            values.update(query=query, product=product)
            text = f"Query: {query} Product: {product}"
        else:
            if not text.strip():
                raise InvalidPayload("text", "is empty")
            values["input"] = text
        try:
            rendered = render_within(
                prompt.template, values, self.loaded.tokenizer, self.settings.max_input_tokens
            )
        except ValueError as err:
            raise InvalidPayload("text", str(err)) from err
        return Job(
            expert=expert,
            prompt=prompt,
            adapter_key=self.loaded.adapter_names.get(expert.adapter_name),
            prompt_ids=rendered.input_ids,
            prompt_text=rendered.text,
            truncated=rendered.truncated,
            input_text=text,
            options=opts,
            request_id=request_id,
            received_at=received_at if received_at is not None else time.monotonic(),
        )

    # ---- computing ---------------------------------------------------------------------
    def run(self, jobs: list[Job], *, warmup: bool = False) -> list[dict[str, Any] | Exception]:
        """Compute prepared jobs together; each gets its reply payload or its exception."""
        if not jobs:
            return []
        with self._lock:
            if self.loaded.model is None:
                raise EngineClosed(f"engine for {self.base_model_key} is closed")
            started = time.monotonic()
            outcomes: list[dict[str, Any] | Exception | None] = [None] * len(jobs)
            live = []
            for i, job in enumerate(jobs):
                if job.deadline is not None and started >= job.deadline:
                    outcomes[i] = DeadlineExceeded(
                        "deadline passed while waiting for the model; not computed",
                        request_id=job.request_id,
                    )
                else:
                    live.append(i)
            cls = [i for i in live if jobs[i].expert.kind == "classification"]
            ext = [i for i in live if jobs[i].expert.kind != "classification"]
            for indices, fn in ((cls, self._classify), (ext, self._extract)):
                lengths = {i: len(jobs[i].prompt_ids) for i in indices}
                for chunk in length_buckets(indices, lengths, self.settings.max_batch):
                    for i, computed in zip(
                        chunk, self._run_isolated(fn, [jobs[i] for i in chunk]), strict=True
                    ):
                        outcomes[i] = computed
            elapsed_ms = (time.monotonic() - started) * 1000.0
        for job, out in zip(jobs, outcomes, strict=True):
            if isinstance(out, dict):
                out["timings"] = {
                    "queue_ms": round((started - job.received_at) * 1000.0, 3),
                    "inference_ms": round(elapsed_ms, 3),
                    "batch_size": len(jobs),
                }
        return outcomes  # type: ignore[return-value]  # every slot was filled above

    def _run_isolated(
        self, fn: Callable[[list[Job]], Sequence[dict[str, Any]]], jobs: list[Job]
    ) -> list[dict[str, Any] | Exception]:
        """Run a batch; if it fails, run its jobs one by one so a bad one fails alone."""
        try:
            return list(fn(jobs))
        except Exception as err:
            if len(jobs) == 1:
                log.exception("inference failed for request %s", jobs[0].request_id)
                return [err]
            log.warning("batch of %d failed (%s); retrying one by one", len(jobs), err)
            out: list[dict[str, Any] | Exception] = []
            for job in jobs:
                out.extend(self._run_isolated(fn, [job]))
            return out

    def _common(self, job: Job) -> dict[str, Any]:
        return {
            "truncated": job.truncated,
            "input_tokens": len(job.prompt_ids),
            "model": self.base_model_key,
            "adapter": job.expert.adapter_name,
            "task": job.expert.task_key,
            "language": job.expert.language.code,
            "worker_id": self.worker_id,
            "tiny_model": self.loaded.tiny,
        }

    def _prefix(self, job: Job) -> PrefixKV | None:
        """The cached instruction prefix of a job's template under its adapter.

        Only when the job's own (whole-prompt) ids start with the cached ids, so the
        cache holds exactly the keys/values of the prompt's first tokens.
        """
        spec = job.prompt
        n = len(spec.prefix_ids)
        if not n or len(job.prompt_ids) <= n or job.prompt_ids[:n] != spec.prefix_ids:
            return None
        key = (spec.key, job.adapter_key)
        if key not in self._prefix_kv:
            self._prefix_kv[key] = compute_prefix(
                self.loaded.model, spec.prefix_ids, job.adapter_key
            )
        return self._prefix_kv[key]

    def _classify(self, jobs: list[Job]) -> list[dict[str, Any]]:
        rows = [
            ScoreRow(j.prompt_ids, j.prompt.label_ids, j.adapter_key, self._prefix(j)) for j in jobs
        ]
        scores = score_batch(
            self.loaded.model,
            rows,
            self.loaded.tokenizer.pad_token_id,
            use_positions=self._use_positions,
        )
        replies = []
        for job, lls in zip(jobs, scores, strict=True):
            probs = probabilities(lls)
            best = max(range(len(probs)), key=lambda k: probs[k])
            label = job.prompt.labels[best]
            reply = {
                "result": label,
                "label": label,
                "confidence": probs[best],
                **self._common(job),
            }
            if job.options["return_probabilities"]:
                reply["probabilities"] = dict(zip(job.prompt.labels, probs, strict=True))
            if job.options["return_raw_response"]:
                reply["raw_response"] = label
                reply["log_likelihoods"] = dict(zip(job.prompt.labels, lls, strict=True))
            replies.append(reply)
        return replies

    def _extract(self, jobs: list[Job]) -> list[dict[str, Any]]:
        rows = [
            GenRow(
                j.prompt_ids,
                j.adapter_key,
                {
                    **j.expert.generation,
                    **({"max_new_tokens": j.max_new_tokens} if j.max_new_tokens else {}),
                },
            )
            for j in jobs
        ]
        generated = generate_batch(self.loaded.model, self.loaded.tokenizer, rows)
        replies = []
        for job, gen in zip(jobs, generated, strict=True):
            parsed = parse_pii(gen.text, job.input_text, job.expert.label_set)
            reply = {
                "result": parsed.result_json,
                "label": None,
                "confidence": gen.confidence,
                "entities": parsed.entities,
                "generated_tokens": gen.tokens,
                **self._common(job),
            }
            if job.options["return_raw_response"]:
                reply["raw_response"] = gen.text
                reply["repair"] = parsed.repaired
            replies.append(reply)
        return replies

    def infer(
        self, payload: Any, request_id: str = "", deadline: float | None = None
    ) -> dict[str, Any]:
        """Validate and compute one payload synchronously; raises its error.

        Args:
            deadline: ``time.monotonic()`` value; a request still waiting for the model
                then is not computed (``DeadlineExceeded``). A computation that started
                in time is not cut short.
        """
        job = self.prepare(payload, request_id)
        job.deadline = deadline
        outcome = self.run([job])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def close(self) -> None:
        """Drop the model so its memory can be freed (the pool calls this on eviction)."""
        import gc

        with self._lock:
            self.loaded.model = None
            self._prefix_kv.clear()
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
