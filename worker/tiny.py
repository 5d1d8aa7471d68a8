"""Tiny random-weight models, trained tokenizers and LoRA adapters, generated offline.

Tests and the one-command local stack need real models of the architectures the registry
names (Llama, Qwen2, Mistral, Bloom, XGLM) without downloading anything. This module builds
them from configs with fixed seeds, trains a byte-level BPE tokenizer on a few KB of
multilingual text written for this project, and trains real LoRA adapters for a few steps
so their weights are non-zero. Every artifact carries a ``mole_tiny.json`` marker: a worker
that loads one says ``tiny_model: true`` everywhere, because its predictions mean nothing.

Layout (docs/interfaces.md)::

    OUT/models/<base_model_key>/      config, weights, tokenizer, mole_tiny.json
    OUT/adapters/<adapter_path>/      adapter_config.json, adapter weights, mole_tiny.json
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mole.protocol.registry import ExpertsRegistry, load_registry

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

TINY_MARKER = "mole_tiny.json"

#: registry ``family`` -> transformers architecture of the tiny stand-in
ARCHITECTURE_BY_FAMILY: dict[str, str] = {
    "llama2": "llama",
    "llama3": "llama",
    "qwen2": "qwen2",
    "mistral": "mistral",
    "bloom": "bloom",
    "xglm": "xglm",
}

#: LoRA target modules that exist in each architecture (XGLM has no gate/up/down)
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "bloom": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "xglm": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


@dataclass(frozen=True, slots=True)
class TinySize:
    """Shape of a tiny model; ``test`` is ~1-1.5 M parameters, ``bench`` ~25 M."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_positions: int = 2048
    #: std of the random weights; larger than transformers' 0.02 gives a narrow model
    #: confident answers and adapters that visibly change them
    init_std: float = 0.02


#: every dimension a multiple of 64: bitsandbytes' CPU nf4 kernels need whole blocks
SIZES: dict[str, TinySize] = {
    "test": TinySize(hidden=192, layers=2, heads=6, kv_heads=2, intermediate=512, vocab=3000),
    "bench": TinySize(hidden=512, layers=8, heads=8, kv_heads=8, intermediate=1408, vocab=3000),
    #: for real tokenizers (32k-152k tokens): a narrow model keeps the embeddings small
    "narrow": TinySize(
        hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=3000, init_std=0.2
    ),
}

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


CORPUS = """
The company reported strong quarterly earnings and raised its full-year guidance.
Revenue fell sharply after the merger, and the shares dropped ten percent.
The central bank kept interest rates unchanged and signalled patience.
Customers complained that the banking app was slow and the fees were too high.
Great service, fast transfers, and the support team answered within minutes.
The product arrived broken and the refund took three weeks. Very disappointing.
Tax authorities announced new reporting rules for small businesses next year.
The startup raised a new funding round to build cloud software for factories.
Please send the invoice to John Smith at john.smith@example.com or call +1 555 0100.
My IBAN is DE89 3704 0044 0532 0130 00 and my card number is 4111 1111 1111 1111.
Jane Doe lives at 42 Baker Street, London, and works for Acme Bank since 2019-03-01.
The server at 192.168.1.20 rejected the password hunter2 for user jdoe42.
Query: wireless headphones Product: Bluetooth over-ear headphones with noise cancelling
Query: running shoes for men Product: Women's trail running shoe, size 8
Query: phone case Product: Screen protector for the same phone model
Query: coffee maker Product: Garden hose, 30 metres
Die Bank meldete einen starken Gewinn und erhöhte die Prognose für das Gesamtjahr.
Der Kundenservice war freundlich, aber die Überweisung dauerte zu lange.
Die Steuerbehörde kündigte neue Regeln für kleine Unternehmen an.
La banque a publié des résultats solides et relevé ses prévisions annuelles.
Le service client était lent et les frais étaient beaucoup trop élevés.
Les autorités fiscales ont annoncé de nouvelles règles comptables.
El banco informó de beneficios récord y subió su previsión para todo el año.
La aplicación es muy lenta y las comisiones son demasiado altas.
El gobierno aprobó nuevos controles para las empresas tecnológicas.
銀行は四半期の利益が大幅に増加したと発表しました。
このアプリは使いにくく、手数料が高すぎます。
新しい税制が来年から中小企業に適用されます。
该公司公布了强劲的季度收益，并上调了全年预期。
客户服务很差，转账花了整整一周。
政府宣布了针对科技公司的新监管措施。
De bank meldde een sterke winst en verhoogde de verwachting voor het hele jaar.
Mijn naam is Jan de Vries en mijn rekeningnummer is NL91 ABNA 0417 1643 00.
La banca ha registrato utili record e ha alzato le previsioni annuali.
Il mio indirizzo è Via Roma 10, Milano, e il mio telefono è 333 1234567.
Banken rapporterade en stark vinst och höjde prognosen för helåret.
Mitt personnummer är 19800101-1234 och jag bor i Stockholm.
Banken rapporterede et stærkt overskud og hævede forventningerne for året.
Bank odnotował rekordowy zysk i podniósł prognozę na cały rok.
Banka güçlü bir kâr açıkladı ve yıllık beklentisini yükseltti.
Vergi ve muhasebe kurallarında yeni değişiklikler açıklandı.
Rating: 1 2 3 4 5. Very negative, negative, neutral, positive, very positive.
Categories: Business & Management, Finance, Government & Controls, Technology, Industry,
Tax & Accounting. Answer with the category name only.
Labels: E S C I. Exact, Substitute, Complement, Irrelevant. Answer with one letter only.
PII labels: person_name, date, location, organization, contact_info, government_id,
financial_account, payment_card, user_identifier, secret, ip_address.
Return ONLY a JSON array of objects with "text", "label" and "occurrence".
[{"text": "John Smith", "label": "person_name", "occurrence": 1}]
[INST] [/INST] <|system|> <|user|> <|assistant|> <|im_start|>system <|im_start|>user
<|im_start|>assistant <|im_end|> <|start_header_id|>user<|end_header_id|> <|eot_id|>
Title: Review: Text: Answer: Query: Product: Category: Entities:
标题 评论 评分 请用一个数字回答。
"""


def _seed(*parts: str) -> int:
    """A stable seed from names (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:4], "little")


def build_tokenizer(vocab_size: int = 3000) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on :data:`CORPUS` and wrap it for transformers.

    ``padding_side`` is given to the constructor so that it is saved with the tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in CORPUS.splitlines() if line.strip()]
    tok.train_from_iterator(lines * 3, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    # transformers leaves this constructor (TokenizersBackend.__init__) unannotated
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=2048,
    )


def build_config(architecture: str, size: TinySize, tokenizer: PreTrainedTokenizerBase) -> Any:
    """A transformers config of the given architecture at a tiny size."""
    import transformers

    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if architecture in ("llama", "qwen2", "mistral"):
        cls = {
            "llama": transformers.LlamaConfig,
            "qwen2": transformers.Qwen2Config,
            "mistral": transformers.MistralConfig,
        }[architecture]
        return cls(
            hidden_size=size.hidden,
            intermediate_size=size.intermediate,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.kv_heads,
            max_position_embeddings=size.max_positions,
            tie_word_embeddings=False,
            initializer_range=size.init_std,
            **ids,
        )
    if architecture == "bloom":
        return transformers.BloomConfig(
            hidden_size=size.hidden,
            n_layer=size.layers,
            n_head=size.heads,
            initializer_range=size.init_std,
            **ids,
        )
    if architecture == "xglm":
        return transformers.XGLMConfig(
            d_model=size.hidden,
            ffn_dim=size.intermediate,
            num_layers=size.layers,
            attention_heads=size.heads,
            max_position_embeddings=size.max_positions,
            init_std=size.init_std,
            **ids,
        )
    raise ValueError(f"no tiny architecture {architecture!r}")


def _write_marker(directory: Path, info: dict[str, Any]) -> None:
    marker = {"tiny": True, "note": "random weights generated offline; predictions mean nothing"}
    marker.update(info)
    (directory / TINY_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")


def build_model(
    key: str, family: str, size: TinySize, tokenizer: PreTrainedTokenizerBase
) -> tuple[PreTrainedModel, str]:
    """A randomly initialised model for ``key`` (seeded by the key, so reproducible)."""
    import torch
    from transformers import AutoModelForCausalLM

    architecture = ARCHITECTURE_BY_FAMILY.get(family)
    if architecture is None:
        raise ValueError(f"base model {key!r}: no tiny architecture for family {family!r}")
    torch.manual_seed(_seed("model", key))
    config = build_config(architecture, size, tokenizer)
    # from_config and PreTrainedModel.eval are unannotated in transformers
    model: PreTrainedModel = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
        config, dtype=torch.float32
    )
    model.eval()  # type: ignore[no-untyped-call]
    return model, architecture


def train_adapter(
    model: PreTrainedModel,
    architecture: str,
    tokenizer: PreTrainedTokenizerBase,
    adapter_path: str,
    out_dir: Path,
) -> None:
    """Wrap ``model`` with a fresh LoRA, train it a few steps, save it, unwrap."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(_seed("adapter", adapter_path))
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS[architecture],
        task_type="CAUSAL_LM",
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    peft_model.train()
    lines = [line for line in CORPUS.splitlines() if line.strip()]
    offset = _seed("data", adapter_path) % len(lines)
    batch = [lines[(offset + i) % len(lines)] for i in range(4)]
    enc = tokenizer(batch, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    for _ in range(3):
        loss = peft_model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    # peft writes target_modules from a set: sort it so output is byte-for-byte reproducible
    config_path = out_dir / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    if isinstance(saved.get("target_modules"), list):
        saved["target_modules"] = sorted(saved["target_modules"])
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    peft_model.unload()  # leaves the base model as it was


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def generate(
    out: str | os.PathLike[str],
    *,
    registry: ExpertsRegistry | None = None,
    size: str = "test",
    keys: list[str] | None = None,
    log: Callable[[str], None] | None = None,
    tokenizers: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write tiny models and adapters for the registry's base models under ``out``.

    Args:
        out: destination; ``out/models/<key>`` and ``out/adapters/<adapter_path>``.
        registry: which base models and adapters to build (default registry if None).
        size: ``"test"`` (~1 M parameters, seconds) or ``"bench"`` (~25 M parameters).
        keys: only these base model keys (default: all of the registry's).
        log: called with one progress line per model and adapter.
        tokenizers: family -> a real tokenizer to build that family's models on (the
            model's vocabulary is the tokenizer's); other families get the trained BPE.

    Returns:
        A summary: {"models": {key: parameters}, "adapters": [adapter_path, ...]}.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    registry = registry or load_registry()
    log = log or (lambda _msg: None)
    wanted = list(keys) if keys else list(registry.base_models)
    unknown = [k for k in wanted if k not in registry.base_models]
    if unknown:  # before importing torch (seconds): a typo is answered at once
        raise ValueError(f"not in the registry's base_models: {', '.join(unknown)}")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated upstream
    out = Path(out)
    spec = SIZES[size]
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    trained = build_tokenizer(spec.vocab)
    real = dict(tokenizers or {})
    summary: dict[str, Any] = {"models": {}, "adapters": []}
    for key in wanted:
        t0 = time.perf_counter()
        base = registry.base_models[key]
        tokenizer = real.get(base.family, trained)
        # Encoding with padding changes a fast tokenizer's saved state: train with a copy
        # so every model directory gets the same tokenizer files, whatever the order.
        train_tokenizer = copy.deepcopy(tokenizer)
        if train_tokenizer.pad_token_id is None:
            train_tokenizer.pad_token = train_tokenizer.eos_token
        model, architecture = build_model(key, base.family, spec, tokenizer)
        model_dir = out / "models" / key
        model_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(model_dir))
        tokenizer.save_pretrained(str(model_dir))
        n_params = _count(model)
        _write_marker(
            model_dir,
            {
                "base_model_key": key,
                "family": base.family,
                "architecture": architecture,
                "parameters": n_params,
                "size": size,
                "hf_name_replaced": base.hf_name,
                "tokenizer": "real" if tokenizer is not trained else "trained here",
            },
        )
        summary["models"][key] = n_params
        log(
            f"model {key}: {architecture}, {n_params / 1e6:.2f} M parameters "
            f"({time.perf_counter() - t0:.2f} s)"
        )
        adapter_paths = sorted({e.adapter_path for e in registry.experts_for_base_model(key)})
        for adapter_path in adapter_paths:
            t1 = time.perf_counter()
            adapter_dir = out / "adapters" / adapter_path
            train_adapter(model, architecture, train_tokenizer, adapter_path, adapter_dir)
            _write_marker(adapter_dir, {"base_model_key": key, "adapter_path": adapter_path})
            summary["adapters"].append(adapter_path)
            log(f"  adapter {adapter_path} ({time.perf_counter() - t1:.2f} s)")
    return summary
