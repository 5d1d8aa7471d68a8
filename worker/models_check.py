"""``mole models check [KEY…]``: load each base model as a worker would, ask every adapter once.

What a user runs after putting real weights in place and before starting workers: each
base model is loaded with all its adapters through the engine a worker uses (same
settings, same environment variables), one request per adapter is computed, and a table
says for each adapter whether it answered. A model that fails to load fails all its rows
with the loader's message (which names the path and missing file), and the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mole.protocol.registry import ExpertSpec, ExpertsRegistry
from mole.worker.engine.settings import EngineSettings

#: one sample input per task kind, in English and in the request's language where it matters
SAMPLES: dict[str, str] = {
    "rating": "Great bank: the transfer arrived in minutes and the fees are low.",
    "news": "The central bank raised interest rates to curb inflation.",
    "pii": "Jane Doe (jane.doe@example.com) paid with card 4111 1111 1111 1111.",
}
ESCI_SAMPLE = {"query": "wireless headphones", "product": "Bluetooth over-ear headphones"}
COLUMNS = ("model", "adapter", "load s", "memory", "label", "confidence", "ok")


@dataclass(slots=True)
class CheckRow:
    """One adapter's outcome."""

    model: str
    adapter: str
    load_seconds: float | None
    memory: str
    label: str
    confidence: float | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None

    def cells(self) -> tuple[str, ...]:
        return (
            self.model,
            self.adapter,
            "-" if self.load_seconds is None else f"{self.load_seconds:.1f}",
            self.memory,
            self.label,
            "-" if self.confidence is None else f"{self.confidence:.3f}",
            "ok" if self.ok else f"FAIL: {self.error}",
        )


def sample_payload(expert: ExpertSpec) -> dict[str, Any]:
    """A request for one adapter, with a sample input suited to its task."""
    body: dict[str, Any] = {"task": expert.task_key, "adapter": expert.adapter_name}
    if expert.task == "esci":
        body.update(ESCI_SAMPLE)
    else:
        body["text"] = SAMPLES.get(expert.task, SAMPLES["rating"])
    return body


def _memory(model: Any) -> str:
    """The loaded weights' size (transformers' own count), and the GPU's peak if CUDA."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = f"{base.get_memory_footprint() / 2**30:.2f} GiB"
    if torch.cuda.is_available():
        text += f" (cuda peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB)"
    return text


def check_model(
    key: str, registry: ExpertsRegistry, settings: EngineSettings, max_new_tokens: int
) -> list[CheckRow]:
    """Load ``key`` with its adapters and ask each adapter once."""
    from mole.protocol.errors import MoleError
    from mole.worker.engine.engine import Engine

    experts = registry.experts_for_base_model(key) if key in registry.base_models else []
    t0 = time.perf_counter()
    try:
        engine = Engine.load(key, registry, settings, worker_id="models-check")
    except (MoleError, OSError, ValueError, RuntimeError) as err:
        names = [e.adapter_name for e in experts] or ["-"]
        return [CheckRow(key, n, None, "-", "-", None, str(err)) for n in names]
    load_seconds = time.perf_counter() - t0
    rows = []
    try:
        memory = _memory(engine.loaded.model)
        for expert in experts:
            job = engine.prepare(sample_payload(expert), request_id=f"check-{expert.adapter_name}")
            if expert.kind != "classification":
                job.max_new_tokens = max_new_tokens
            outcome = engine.run([job])[0]
            if isinstance(outcome, Exception):
                rows.append(
                    CheckRow(
                        key, expert.adapter_name, load_seconds, memory, "-", None, str(outcome)
                    )
                )
                continue
            if expert.kind == "classification":
                label = str(outcome["label"])
                error = None if label in expert.label_set else f"label {label!r} not in the set"
            else:
                label = f"{len(outcome['entities'])} entities"
                error = None
            rows.append(
                CheckRow(
                    key,
                    expert.adapter_name,
                    load_seconds,
                    memory,
                    label,
                    float(outcome["confidence"]),
                    error,
                )
            )
    finally:
        engine.close()
    return rows


def format_table(rows: list[CheckRow]) -> str:
    """A plain-text table, one line per adapter."""
    cells = [COLUMNS, *(r.cells() for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(COLUMNS))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def check_models(
    keys: list[str],
    registry: ExpertsRegistry,
    settings: EngineSettings,
    *,
    max_new_tokens: int = 64,
    on_model: Callable[[str, list[CheckRow]], None] | None = None,
) -> list[CheckRow]:
    """Check each key in turn (one model in memory at a time)."""
    rows: list[CheckRow] = []
    for key in keys:
        found = check_model(key, registry, settings, max_new_tokens)
        if on_model is not None:
            on_model(key, found)
        rows.extend(found)
    return rows
