"""Build a tiny random XLM-RoBERTa offline: a byte-level BPE tokenizer trained here with
`tokenizers` and a 2-layer, hidden-32 XLMRobertaModel. Nothing comes from the hub; its
outputs mean nothing (tests check formats and arithmetic, benchmarks check speed)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from mole.gating.settings import DEFAULT_TRAIN_DATA


def build_tiny_xlmr(
    out: Path, *, extra_texts: Iterable[str] = (), hidden: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    texts = [json.loads(line)["description"] for line in DEFAULT_TRAIN_DATA.open(encoding="utf-8")]
    texts += list(extra_texts)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=128,
    )
    config = XLMRobertaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=132,
        pad_token_id=fast.pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    XLMRobertaModel(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out
