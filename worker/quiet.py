"""Silence third-party messages that tell a worker's operator nothing they can act on.

Every worker log used to open with warnings from libraries about their own internals (a
deprecated attribute peft reads from transformers, an optional bitsandbytes CPU kernel that
is not installed). They are noise that hides the lines that matter, so each is named here
exactly (by its logger or warning text) with why it is harmless, and dropped before the
libraries are imported. Anything not listed still reaches the log.
"""

from __future__ import annotations

import logging
import warnings

#: (warning category, regex the message starts with, why it is harmless)
WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (
        FutureWarning,
        r"`is_gradient_checkpointing` is deprecated",
        "peft reads the attribute when it wraps a model; inference never checkpoints",
    ),
    (
        DeprecationWarning,
        r"`torch\.jit\.script_method` is deprecated",
        "raised while bitsandbytes and transformers import; nothing the worker calls",
    ),
)

#: (logger name, message prefix, why it is harmless)
LOG_RECORDS: tuple[tuple[str, str, str], ...] = (
    (
        "bitsandbytes.backends.cpu.ops",
        "Failed to load CPU gemm_4bit_forward from kernels-community",
        "an optional accelerated CPU kernel (the `kernels` package, fetched from the hub, "
        "which a worker never does); bitsandbytes falls back to its own implementation",
    ),
)


class _DropPrefixes(logging.Filter):
    """Drops the records of one logger whose message starts with a known prefix."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def silence_third_party_noise() -> None:
    """Install the filters; call before importing torch, transformers, peft, bitsandbytes."""
    for category, pattern, _why in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    prefixes: dict[str, list[str]] = {}
    for name, prefix, _why in LOG_RECORDS:
        prefixes.setdefault(name, []).append(prefix)
    for name, listed in prefixes.items():
        logging.getLogger(name).addFilter(_DropPrefixes(tuple(listed)))
