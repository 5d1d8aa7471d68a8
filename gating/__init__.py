"""Gating: which expert answers a request (language -> domain -> task -> expert).

The default path needs numpy and fasttext-predict only; torch and transformers are
imported lazily, by the XLM-R domain classifier and the encoder task router.
"""

from mole.gating.errors import (
    ArtifactError,
    DomainWithoutTasks,
    GatingError,
    InvalidInput,
    LanguageUncertain,
    TaskNotServed,
    UnknownDomain,
    UnknownTask,
    UnsupportedLanguage,
)
from mole.gating.pipeline import GatingPipeline, GatingResult

__all__ = [
    "ArtifactError",
    "DomainWithoutTasks",
    "GatingError",
    "GatingPipeline",
    "GatingResult",
    "InvalidInput",
    "LanguageUncertain",
    "TaskNotServed",
    "UnknownDomain",
    "UnknownTask",
    "UnsupportedLanguage",
]
