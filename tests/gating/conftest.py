"""Gating fixtures: the shipped registry and router, and a tiny random XLM-R built offline.

The tiny XLM-R (2 layers, hidden 32) has a byte-level BPE tokenizer trained here with
`tokenizers` on the router's training descriptions; nothing comes from the hub. Its
predictions mean nothing: tests use it to check formats and arithmetic, not quality.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# NOTE: tests/ (on sys.path under pytest) holds a ``gating`` directory without
# __init__.py, which Python would import as an empty namespace package; the repository
# root goes first so the real package wins (as tests/protocol/conftest.py does).
sys.path.insert(0, str(Path(__file__).parent))  # po_samples
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT in sys.path:
    sys.path.remove(ROOT)
sys.path.insert(0, ROOT)
for _name in ("gating", "protocol"):
    _module = sys.modules.get(_name)
    if _module is not None and getattr(_module, "__file__", None) is None:
        del sys.modules[_name]

from gating.settings import DEFAULT_TRAIN_DATA  # noqa: E402
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
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    out = tmp_path_factory.mktemp("tiny-xlmr")
    texts = [json.loads(line)["description"] for line in DEFAULT_TRAIN_DATA.open(encoding="utf-8")]
    texts += list(SENTENCES.values())
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", mask_token="<mask>", cls_token="<s>", sep_token="</s>",
        model_max_length=128,
    )
    config = XLMRobertaConfig(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=132, pad_token_id=fast.pad_token_id,
        bos_token_id=0, eos_token_id=2,
    )
    torch.manual_seed(0)
    XLMRobertaModel(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out
