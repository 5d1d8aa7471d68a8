"""Gating fixtures: the shipped registry and router, and a tiny random XLM-R built offline.

The tiny XLM-R (2 layers, hidden 32) has a byte-level BPE tokenizer trained here with
`tokenizers` on the router's training descriptions; nothing comes from the hub. Its
predictions mean nothing: tests use it to check formats and arithmetic, not quality.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# NOTE: tests/ (on sys.path under pytest) holds a ``gating`` directory without
# __init__.py, which Python would import as an empty namespace package; the repository
# root goes first so the real package wins (as tests/protocol/conftest.py does).
sys.path.insert(0, str(Path(__file__).parent))  # po_samples, tiny_xlmr
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT in sys.path:
    sys.path.remove(ROOT)
sys.path.insert(0, ROOT)
for _name in ("gating", "protocol"):
    _module = sys.modules.get(_name)
    if _module is not None and getattr(_module, "__file__", None) is None:
        del sys.modules[_name]

from protocol.registry import load_registry  # noqa: E402

#: one financial sentence per served language (40+ characters)
SENTENCES = {
    "en": "The company's quarterly profit rose sharply thanks to strong demand.",
    "de": "Der Quartalsgewinn des Unternehmens stieg dank starker Nachfrage deutlich.",
    "fr": "Le bénéfice trimestriel de l'entreprise a fortement augmenté grâce à la demande.",
    "es": "El beneficio trimestral de la empresa aumentó con fuerza gracias a la demanda.",
    "it": "L'utile trimestrale dell'azienda è cresciuto molto grazie alla forte domanda.",
    "nl": "De kwartaalwinst van het bedrijf steeg sterk dankzij de grote vraag.",
    "sv": "Företagets kvartalsvinst steg kraftigt tack vare den starka efterfrågan.",
    "da": "Virksomhedens kvartalsoverskud steg kraftigt takket være den store efterspørgsel.",
    "pl": "Kwartalny zysk firmy mocno wzrósł dzięki silnemu popytowi na jej produkty.",
    "tr": "Şirketin çeyreklik kârı güçlü talep sayesinde keskin bir şekilde arttı.",
    "ja": "会社の四半期利益は旺盛な需要のおかげで大幅に増加しました。",
    "zh": "由于需求强劲，公司的季度利润大幅增长。",
}

#: an English description per task
DESCRIPTIONS = {
    "rating": "Rate the sentiment of this text from 1 (very negative) to 5 (very positive).",
    "pii": "Extract the personal information (names, account numbers, addresses) in the text.",
    "news": "Classify this financial news article into one of six topics.",
    "esci": "Is the product an exact match, a substitute, a complement or irrelevant to the query?",
}


@pytest.fixture(scope="session")
def registry():
    return load_registry()


@pytest.fixture(scope="session")
def pipeline():
    from gating import GatingPipeline

    return GatingPipeline.load()


@pytest.fixture(scope="session")
def detector(pipeline):
    return pipeline.detector


@pytest.fixture(scope="session")
def tiny_xlmr(tmp_path_factory) -> Path:
    """A local tiny random XLM-R directory (config, weights, tokenizer)."""
    from tiny_xlmr import build_tiny_xlmr

    return build_tiny_xlmr(tmp_path_factory.mktemp("tiny-xlmr"), extra_texts=SENTENCES.values())
