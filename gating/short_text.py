"""A second opinion on short texts: Lingua's n-gram models, restricted to served languages.

Why: fastText's ``lid.176.ftz`` is trained on sentences; on 10-30 characters (a search
query, a menu title) it reads Danish as Norwegian and Dutch as German. Lingua
(``lingua-language-detector``) is built for short text: it scores 1- to 5-grams of every
candidate language, and it can be limited to the languages the registry serves, so its
answer is a distribution over exactly those. Measured on 150 short Django catalog strings
per served language (tests/benchmarks/bench_short_language.py), fastText x Lingua with the
description's language as a prior reaches >= 95% in every one of the 12 languages, where
fastText alone with the description left Danish at 77%.

Its models ship inside the wheel (no download at run time). Loading the high-accuracy
models for 12 languages costs about 300-350 MB of memory per process and 4 s (more on a
loaded machine), so they are loaded once per process, on the first short text, and long
texts never touch them. Where requests run on an event loop (the frontend), that first
short text must not stall every other request: :meth:`ShortTextModel.defer_loading` makes
it start the load in a thread (Lingua releases the GIL while loading) and be answered
without Lingua until the models are in. The package is optional: without it
:func:`lingua_available` is False and gating decides short texts with fastText and the
description alone (as before).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Collection, Iterable
from typing import Any


def lingua_available() -> bool:
    """Whether ``lingua-language-detector`` is installed (without importing it)."""
    return importlib.util.find_spec("lingua") is not None


class ShortTextModel:
    """Lingua restricted to the served languages, built lazily and once (thread-safe).

    Args:
        served: ISO 639-1 codes of the served languages; each must be one Lingua knows.

    Raises:
        ValueError: a served code is unknown to Lingua.
        ImportError: Lingua is not installed.
    """

    def __init__(self, served: Iterable[str]) -> None:
        from lingua import IsoCode639_1, Language

        self.served = tuple(sorted(set(served)))
        languages = []
        for code in self.served:
            iso = getattr(IsoCode639_1, code.upper(), None)
            if iso is None:
                raise ValueError(f"language {code!r} is not one Lingua can identify")
            languages.append(Language.from_iso_code_639_1(iso))
        self._languages = languages
        # Lingua's Language -> our code, once: reading it back through
        # ``language.iso_code_639_1.name`` costs three native calls per value per text
        self._codes: dict[Any, str] = dict(zip(languages, self.served, strict=True))
        self._detector: Any = None
        # detectors over subsets of the served languages, by subset: built in
        # microseconds once the full detector has loaded the models, which they share
        self._subsets: dict[frozenset[str], Any] = {}
        self._lock = threading.Lock()
        self._deferred = False
        self._loader: threading.Thread | None = None
        # not self._lock: the loading thread holds that one for seconds
        self._loader_lock = threading.Lock()

    def _built(self) -> Any:
        if self._detector is None:
            with self._lock:
                if self._detector is None:
                    from lingua import LanguageDetectorBuilder

                    # high-accuracy mode (the default): its 1-5-gram models are what
                    # make 10-30 characters decidable; low-accuracy mode (trigrams
                    # only) measured 0.95 mean with Danish and Swedish at 0.88.
                    # Preloaded: otherwise build() is instant and each language's
                    # models load inside some later detection call, on the request path
                    self._detector = (
                        LanguageDetectorBuilder.from_languages(*self._languages)
                        .with_preloaded_language_models()
                        .build()
                    )
        return self._detector

    def defer_loading(self) -> None:
        """From now on, a short text that finds the models not loaded starts loading them
        in a background thread and gets no opinion (an empty distribution) meanwhile,
        instead of waiting seconds for them."""
        self._deferred = True

    def _load_in_background(self) -> None:
        with self._loader_lock:
            if self._loader is None:
                self._loader = threading.Thread(target=self._built, name="lingua-load", daemon=True)
                self._loader.start()

    @property
    def loaded(self) -> bool:
        """Whether the models have been built (the first short text builds them)."""
        return self._detector is not None

    def _subset(self, among: frozenset[str]) -> Any:
        detector = self._subsets.get(among)
        if detector is None:
            from lingua import LanguageDetectorBuilder

            self._built()  # the models, loaded once for all subsets
            languages = [lang for lang, code in self._codes.items() if code in among]
            detector = (
                LanguageDetectorBuilder.from_languages(*languages)
                .with_preloaded_language_models()
                .build()
            )
            # NOTE: two threads may build the same subset at once; both are equal
            self._subsets[among] = detector
        return detector

    def distribution(self, text: str, among: Collection[str] | None = None) -> dict[str, float]:
        """Lingua's confidence per served language (sums to 1; empty when it has no
        opinion, e.g. a script none of the served languages use).

        ``among``: only these served languages are weighed, and the distribution is over
        them (Lingua's cost per call is ~50 µs plus ~4 µs per language from three on:
        over 5 it is about 0.65 of over 12, tests/benchmarks/bench_lingua_candidates.py).
        Codes that are not served are ignored.
        """
        detector = self._detector
        if detector is None:
            if self._deferred:
                self._load_in_background()
                return {}
            detector = self._built()
        if among is not None:
            subset = frozenset(among).intersection(self.served)
            if len(subset) < 2:
                return {}  # one language or none: Lingua has nothing to tell apart
            if len(subset) < len(self.served):
                detector = self._subset(subset)
        codes = self._codes
        return {
            codes[v.language]: v.value
            for v in detector.compute_language_confidence_values(text)
            if v.value > 0
        }
