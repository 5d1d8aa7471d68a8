"""The experts registry: which base model and adapter serve each (task, language).

It is the contract between gating (which expert answers a request) and workers (what a
worker of a base model must load), so it lives beside the wire format and, like it, is
pure Python. The file keeps the original service's schema (``base_models``; ``tasks`` with
``base_model_key``, ``adapter_name``, ``adapter_path``, ``template_path``, ``label_set``,
``generation``, ``language_mapping``) and is validated whole on load: a bad file is
refused with a message naming the key at fault, never half-used.

Languages may be written as English names (``"german"``) or ISO 639-1 codes (``"de"``)
anywhere; both resolve to the same :class:`Language`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mole.configs import config_path
from mole.protocol.errors import MoleError

CONFIGS_DIR = config_path()
DEFAULT_REGISTRY_PATH = CONFIGS_DIR / "experts_registry.json"

#: Languages the project knows by name. ISO 639-1 code -> lower-case English name.
LANGUAGE_NAMES: dict[str, str] = {
    "en": "english",
    "de": "german",
    "fr": "french",
    "es": "spanish",
    "ja": "japanese",
    "zh": "chinese",
    "nl": "dutch",
    "it": "italian",
    "sv": "swedish",
    "da": "danish",
    "pl": "polish",
    "tr": "turkish",
    "pt": "portuguese",
    "ru": "russian",
    "ko": "korean",
    "ar": "arabic",
    "no": "norwegian",
    "fi": "finnish",
    "cs": "czech",
    "el": "greek",
    "hi": "hindi",
    "uk": "ukrainian",
}
_CODES_BY_NAME = {name: code for code, name in LANGUAGE_NAMES.items()}


class RegistryError(MoleError):
    """The registry file is missing, unreadable or inconsistent."""


class UnknownExpert(MoleError):
    """No expert is registered for a (task, language) pair."""

    def __init__(self, message: str, *, task: str, language: str, served: list[str]) -> None:
        super().__init__(message)
        self.task = task
        self.language = language
        self.served = served


@dataclass(frozen=True, slots=True)
class Language:
    code: str
    name: str


def language(value: str) -> Language:
    """Resolve a language given as a name or ISO code (any case).

    Raises:
        KeyError: the language is unknown to the project (or not a string).
    """
    if not isinstance(value, str):
        raise KeyError(value)
    key = value.strip().lower()
    if key in LANGUAGE_NAMES:
        return Language(key, LANGUAGE_NAMES[key])
    if key in _CODES_BY_NAME:
        return Language(_CODES_BY_NAME[key], key)
    raise KeyError(value)


@dataclass(frozen=True, slots=True)
class BaseModelSpec:
    key: str
    hf_name: str
    family: str
    load_in_4bit: bool = False
    device_map: str = "auto"
    dtype: str = "float16"


@dataclass(frozen=True, slots=True)
class ExpertSpec:
    """Everything needed to serve one (task, language): the result of selection."""

    task_key: str  # e.g. "finance/rating"
    domain: str  # "finance"
    task: str  # "rating"
    kind: str  # "classification" or "extraction"
    language: Language
    base_model_key: str
    adapter_name: str
    adapter_path: str  # relative to the adapters root
    template_path: Path  # absolute
    label_set: tuple[str, ...]
    generation: dict[str, Any]

    def adapter_dir(self, adapters_root: str | os.PathLike[str]) -> Path:
        return Path(adapters_root) / self.adapter_path


@dataclass(slots=True)
class TaskSpec:
    key: str
    domain: str
    name: str
    kind: str
    description: str
    label_set: tuple[str, ...]
    generation: dict[str, Any]
    experts: dict[str, ExpertSpec] = field(default_factory=dict)  # by language code

    @property
    def languages(self) -> list[Language]:
        return [e.language for e in self.experts.values()]


@dataclass(slots=True)
class ExpertsRegistry:
    """A validated registry. Build it with :func:`load_registry`."""

    path: Path | None
    raw: dict[str, Any]
    default_generation: dict[str, Any]
    base_models: dict[str, BaseModelSpec]
    tasks: dict[str, TaskSpec]

    @property
    def domains(self) -> list[str]:
        return sorted({t.domain for t in self.tasks.values()})

    def tasks_of_domain(self, domain: str) -> list[TaskSpec]:
        """The domain's tasks in registry order (the order the task router's actions use)."""
        return [t for t in self.tasks.values() if t.domain == domain]

    @property
    def languages(self) -> list[Language]:
        seen: dict[str, Language] = {}
        for task in self.tasks.values():
            for lang in task.languages:
                seen.setdefault(lang.code, lang)
        return sorted(seen.values(), key=lambda lang: lang.name)

    def resolve(self, task_key: str, lang: str) -> ExpertSpec:
        """The expert for a task (``"finance/rating"`` or ``"rating"``) and a language.

        Raises:
            UnknownExpert: the task is unknown or does not serve that language. There is
                deliberately no fallback to another language's expert.
        """
        task = self.task(task_key)
        try:
            code = language(lang).code
        except KeyError:
            code = lang
        expert = task.experts.get(code)
        if expert is None:
            served = sorted(lang.name for lang in task.languages)
            raise UnknownExpert(
                f"task {task.key!r} is not served in {lang!r}; served: {', '.join(served)}",
                task=task.key,
                language=lang,
                served=served,
            )
        return expert

    def task(self, task_key: str) -> TaskSpec:
        if task_key in self.tasks:
            return self.tasks[task_key]
        matches = [t for t in self.tasks.values() if t.name == task_key]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UnknownExpert(
                f"task name {task_key!r} is ambiguous; use one of: "
                f"{', '.join(t.key for t in matches)}",
                task=task_key,
                language="",
                served=[],
            )
        raise UnknownExpert(
            f"unknown task {task_key!r}; known: {', '.join(self.tasks)}",
            task=task_key,
            language="",
            served=[],
        )

    def experts_for_base_model(self, base_model_key: str) -> list[ExpertSpec]:
        """Every (task, language) expert a worker of this base model must serve."""
        return [
            e
            for t in self.tasks.values()
            for e in t.experts.values()
            if e.base_model_key == base_model_key
        ]


def _require(mapping: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in mapping:
        raise RegistryError(f"{where}: missing required key {key!r}")
    value = mapping[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RegistryError(f"{where}.{key}: expected {names}, got {type(value).__name__}")
    return value


def parse_registry(raw: dict[str, Any], *, path: Path | None = None) -> ExpertsRegistry:
    """Validate a registry document and build the typed view of it.

    Raises:
        RegistryError: with the dotted key at fault in the message.
    """
    if not isinstance(raw, dict):
        raise RegistryError("registry: top level must be a JSON object")
    configs_dir = path.parent if path is not None else CONFIGS_DIR
    default_generation = raw.get("default_generation", {})
    if not isinstance(default_generation, dict):
        raise RegistryError("default_generation: expected object")

    base_models: dict[str, BaseModelSpec] = {}
    for key, spec in _require(raw, "base_models", "registry", dict).items():
        where = f"base_models.{key}"
        if not isinstance(spec, dict):
            raise RegistryError(f"{where}: expected object")
        base_models[key] = BaseModelSpec(
            key=key,
            hf_name=_require(spec, "hf_name", where, str),
            family=_require(spec, "family", where, str),
            load_in_4bit=bool(spec.get("load_in_4bit", False)),
            device_map=str(spec.get("device_map", "auto")),
            dtype=str(spec.get("dtype", "float16")),
        )

    tasks: dict[str, TaskSpec] = {}
    for task_key, spec in _require(raw, "tasks", "registry", dict).items():
        where = f"tasks.{task_key}"
        if not isinstance(spec, dict):
            raise RegistryError(f"{where}: expected object")
        if task_key.count("/") != 1 or not all(task_key.split("/")):
            raise RegistryError(f"{where}: task keys are '<domain>/<task>'")
        domain, name = task_key.split("/")
        labels = _require(spec, "label_set", where, list)
        if not labels or not all(isinstance(x, str) and x for x in labels):
            raise RegistryError(f"{where}.label_set: must be a non-empty list of strings")
        if len(set(labels)) != len(labels):
            raise RegistryError(f"{where}.label_set: labels must be distinct")
        task_generation = spec.get("generation", {})
        if not isinstance(task_generation, dict):
            raise RegistryError(f"{where}.generation: expected object")
        generation = {**default_generation, **task_generation}
        kind = spec.get("kind", "classification")
        if kind not in ("classification", "extraction"):
            raise RegistryError(f"{where}.kind: must be 'classification' or 'extraction'")
        task = TaskSpec(
            key=task_key,
            domain=domain,
            name=name,
            kind=kind,
            description=str(spec.get("description", "")),
            label_set=tuple(labels),
            generation=generation,
        )
        default_bm = spec.get("base_model_key")
        if default_bm is not None and default_bm not in base_models:
            raise RegistryError(f"{where}.base_model_key: {default_bm!r} is not in base_models")
        mapping = _require(spec, "language_mapping", where, dict)
        if not mapping:
            raise RegistryError(f"{where}.language_mapping: must name at least one language")
        for lang_key, entry in mapping.items():
            ewhere = f"{where}.language_mapping.{lang_key}"
            try:
                lang = language(lang_key)
            except KeyError:
                raise RegistryError(f"{ewhere}: unknown language {lang_key!r}") from None
            if lang.code in task.experts:
                raise RegistryError(f"{ewhere}: language {lang.name} is mapped twice")
            if not isinstance(entry, dict):
                raise RegistryError(f"{ewhere}: expected object")
            merged = {
                k: spec.get(k)
                for k in ("base_model_key", "adapter_name", "adapter_path", "template_path")
            }
            merged.update({k: v for k, v in entry.items() if v is not None})
            bm = _require(merged, "base_model_key", ewhere, str)
            if bm not in base_models:
                raise RegistryError(f"{ewhere}.base_model_key: {bm!r} is not in base_models")
            adapter_path = _require(merged, "adapter_path", ewhere, str)
            parts = Path(adapter_path).parts
            if not adapter_path or Path(adapter_path).is_absolute() or ".." in parts:
                raise RegistryError(
                    f"{ewhere}.adapter_path: {adapter_path!r} must be a relative path under "
                    "the adapters root (no leading '/', no '..')"
                )
            template = Path(_require(merged, "template_path", ewhere, str))
            if not template.is_absolute():
                template = configs_dir / template
            task.experts[lang.code] = ExpertSpec(
                task_key=task_key,
                domain=domain,
                task=name,
                kind=kind,
                language=lang,
                base_model_key=bm,
                adapter_name=_require(merged, "adapter_name", ewhere, str),
                adapter_path=adapter_path,
                template_path=template,
                label_set=task.label_set,
                generation=generation,
            )
        declared = spec.get("supported_languages")
        if declared is not None and (
            not isinstance(declared, list) or not all(isinstance(x, str) for x in declared)
        ):
            raise RegistryError(f"{where}.supported_languages: expected a list of strings")
        if declared is not None:
            try:
                declared_codes = {language(x).code for x in declared}
            except KeyError as err:
                raise RegistryError(
                    f"{where}.supported_languages: unknown language {err}"
                ) from None
            if declared_codes != set(task.experts):
                raise RegistryError(
                    f"{where}.supported_languages: {sorted(declared_codes)} does not match "
                    f"language_mapping {sorted(task.experts)}"
                )
        tasks[task_key] = task
    if not tasks:
        raise RegistryError("tasks: the registry defines no task")
    return ExpertsRegistry(path, raw, default_generation, base_models, tasks)


def registry_path_from_env() -> Path:
    return Path(os.environ.get("EXPERT_REGISTRY_PATH") or DEFAULT_REGISTRY_PATH)


def load_registry(path: str | os.PathLike[str] | None = None) -> ExpertsRegistry:
    """Read and validate the registry (default: ``EXPERT_REGISTRY_PATH`` or configs/)."""
    p = Path(path) if path is not None else registry_path_from_env()
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"registry file not found: {p}") from None
    except json.JSONDecodeError as err:
        raise RegistryError(f"{p}: not valid JSON ({err})") from err
    return parse_registry(raw, path=p)
