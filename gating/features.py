"""Hashed word and character n-gram features of a task description (numpy, no model).

Why hashing: the router must run in well under a millisecond, learn online from feedback,
and read descriptions in a dozen languages (some without spaces). Hashed n-grams need no
vocabulary, so a new word in feedback simply lands in its bucket.

Features of a lower-cased, NFKC-normalised, whitespace-collapsed description:

* word unigrams and bigrams (``\\w+`` tokens), hashed with CRC-32 (stable across
  processes, unlike ``hash()``);
* character n-grams for n in ``char_ngrams`` over the padded string, hashed with a
  vectorised polynomial hash over the code points (this covers Chinese and Japanese,
  which have no spaces, and inflected forms in the other languages).

The result is a sparse vector (indices, values) with unit L2 norm (before collisions).
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")
_P = np.uint64(0x100000001B3)  # FNV-64 prime as the polynomial base
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """How descriptions become features; saved with a router so both sides agree."""

    n_bits: int = 18
    char_ngrams: tuple[int, ...] = (1, 2, 3, 4)
    word_ngrams: tuple[int, ...] = (1, 2)

    @property
    def dim(self) -> int:
        return 1 << self.n_bits

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_bits": self.n_bits,
            "char_ngrams": list(self.char_ngrams),
            "word_ngrams": list(self.word_ngrams),
        }

    def __post_init__(self) -> None:
        # NOTE: the weight matrix is dense [2**n_bits x n_tasks]: bound it (2**24 x 4 floats
        # is 256 MiB) so a corrupt or hostile meta.json cannot ask for gigabytes
        if not 8 <= self.n_bits <= 24:
            raise ValueError(f"n_bits must be in [8, 24], got {self.n_bits}")
        if any(n < 1 or n > 8 for n in self.char_ngrams + self.word_ngrams):
            raise ValueError("n-gram sizes must be in [1, 8]")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(
            n_bits=int(d["n_bits"]),
            char_ngrams=tuple(int(n) for n in d["char_ngrams"]),
            word_ngrams=tuple(int(n) for n in d["word_ngrams"]),
        )


#: descriptions are a sentence or two; longer input is cut so a route stays cheap
MAX_CHARS = 2000


def normalize(text: str) -> str:
    """Lower-cased NFKC with collapsed spaces; lone surrogates become U+FFFD."""
    text = text[:MAX_CHARS].encode("utf-8", "replace").decode("utf-8")
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


class Featurizer:
    """Maps a description to ``(indices int64[n], values float32[n])``."""

    def __init__(self, spec: FeatureSpec | None = None) -> None:
        self.spec = spec or FeatureSpec()
        self._mask = np.uint64(self.spec.dim - 1)
        self._max_n = max(self.spec.char_ngrams, default=0)

    def __call__(self, text: str) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        s = normalize(text)
        parts: list[NDArray[np.uint64]] = []
        # word n-grams: a handful of CRC-32 calls
        words = _WORD.findall(s)
        hashes: list[int] = []
        for n in self.spec.word_ngrams:
            salt = n * 0x1F3D5B79
            for i in range(len(words) - n + 1):
                hashes.append(zlib.crc32(" ".join(words[i : i + n]).encode()) ^ salt)
        if hashes:
            parts.append(np.asarray(hashes, dtype=np.uint64) * _MIX)
        # character n-grams: one rolling step per n over the code points
        if self._max_n:
            cp = np.frombuffer(f" {s} ".encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
            h = cp
            for n in range(1, self._max_n + 1):
                if n > 1:
                    if len(h) < 2:
                        break
                    h = h[:-1] * _P + cp[n - 1 :]
                if n in self.spec.char_ngrams:
                    parts.append((h + np.uint64(n)) * _MIX)
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        mixed = np.concatenate(parts)
        idx = ((mixed ^ (mixed >> np.uint64(31))) & self._mask).astype(np.int64)
        val = np.full(len(idx), 1.0 / np.sqrt(len(idx)), dtype=np.float32)
        return idx, val
