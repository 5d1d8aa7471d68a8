"""Helpers for the engine tests: engines over the session's tiny models."""

from __future__ import annotations

from pathlib import Path

from mole.protocol.registry import load_registry
from mole.worker.engine.engine import Engine
from mole.worker.engine.settings import EngineSettings

REGISTRY = load_registry()


def settings_for(tiny: Path, **overrides) -> EngineSettings:
    settings = EngineSettings(
        models_dir=Path(tiny) / "models",
        adapters_dir=Path(tiny) / "adapters",
        device="cpu",
        force_4bit=False,
        keep_dtype=False,
        max_input_tokens=1024,
        max_batch=16,
        batch_wait_ms=5.0,
        torch_threads=0,
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


def load_engine(tiny: Path, key: str, **overrides) -> Engine:
    return Engine.load(key, REGISTRY, settings_for(tiny, **overrides), worker_id="test-w")


def payload_for(
    expert, text: str = "The bank raised its forecast after record profits.", **extra
) -> dict:
    payload = {
        "task": expert.task_key,
        "language": expert.language.code,
        "adapter": expert.adapter_name,
        "text": text,
        "options": {"return_probabilities": True},
    }
    if expert.task == "esci":
        payload.update(query="wireless headphones", product="Bluetooth over-ear headphones")
    payload.update(extra)
    return payload
