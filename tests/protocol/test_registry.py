"""The experts registry: the shipped file serves exactly the table, and bad files are refused
with a message that names the key at fault."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mole.protocol.registry import (
    DEFAULT_REGISTRY_PATH,
    RegistryError,
    UnknownExpert,
    language,
    load_registry,
    parse_registry,
)

#: the served table of the issue: task -> language -> base_model_key
SERVED = {
    "finance/rating": {
        "english": "llama-2-7b-hf",
        "german": "llama-2-7b-hf",
        "french": "llama-2-7b-hf",
        "spanish": "qwen2.5-7b-instruct",
        "japanese": "qwen2.5-7b-instruct",
        "chinese": "bloomz-7b1",
    },
    "finance/pii": {
        lang: "mistral-7B-Instruct-v0.3"
        for lang in ("english", "dutch", "french", "german", "italian", "spanish", "swedish")
    },
    "finance/news": {
        "english": "unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        "danish": "unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        "spanish": "unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        "polish": "unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        "turkish": "facebook/xglm-7.5B",
    },
    "finance/esci": {
        "english": "llama-3.1-8b-instruct",
        "japanese": "llama-3.1-8b-instruct",
        "spanish": "mistral-7B-Instruct-v0.3",
    },
}


@pytest.fixture(scope="module")
def raw() -> dict:
    return json.loads(DEFAULT_REGISTRY_PATH.read_text(encoding="utf-8"))


def test_shipped_registry_serves_exactly_the_table():
    reg = load_registry(DEFAULT_REGISTRY_PATH)
    assert list(reg.tasks) == list(SERVED)  # registry order = the router's action order
    for task_key, langs in SERVED.items():
        task = reg.task(task_key)
        assert sorted(lang.name for lang in task.languages) == sorted(langs)
        for lang_name, base in langs.items():
            expert = reg.resolve(task_key, lang_name)
            assert expert.base_model_key == base
            assert expert.base_model_key in reg.base_models
            assert expert.language.name == lang_name
            assert expert.label_set == task.label_set
            assert not Path(expert.adapter_path).is_absolute()
    assert reg.domains == ["finance"]
    assert len(reg.languages) == 12


def test_names_and_codes_resolve_the_same_expert_in_any_case():
    reg = load_registry()
    for task_key, langs in SERVED.items():
        for lang_name in langs:
            code = language(lang_name).code
            a = reg.resolve(task_key, lang_name)
            assert reg.resolve(task_key, code) == a
            assert reg.resolve(task_key, code.upper()) == a
            assert reg.resolve(task_key, lang_name.title()) == a
            assert reg.resolve(task_key.split("/")[1], code) == a  # short task name


def test_no_fallback_to_another_language():
    reg = load_registry()
    with pytest.raises(UnknownExpert) as err:
        reg.resolve("finance/rating", "dutch")
    assert err.value.served == sorted(SERVED["finance/rating"])
    assert "dutch" in str(err.value)
    with pytest.raises(UnknownExpert):
        reg.resolve("finance/nope", "en")
    with pytest.raises(UnknownExpert):
        reg.resolve("finance/rating", 3)  # not a string: an unknown language, not a crash


def test_adapter_dir_is_under_a_configurable_root(tmp_path):
    expert = load_registry().resolve("finance/pii", "sv")
    assert expert.adapter_dir(tmp_path) == tmp_path / expert.adapter_path
    assert expert.template_path.is_absolute()


def test_experts_for_base_model():
    reg = load_registry()
    qwen = reg.experts_for_base_model("qwen2.5-7b-instruct")
    keys = {(e.task_key, e.language.name) for e in qwen}
    assert keys == {("finance/rating", "spanish"), ("finance/rating", "japanese")}
    mistral = {
        (e.task_key, e.language.name)
        for e in reg.experts_for_base_model("mistral-7B-Instruct-v0.3")
    }
    assert ("finance/esci", "spanish") in mistral
    assert len(mistral) == 8


def _broken(raw, mutate):
    doc = copy.deepcopy(raw)
    mutate(doc)
    return doc


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("base_models"), "registry: missing required key 'base_models'"),
        (lambda d: d.pop("tasks"), "registry: missing required key 'tasks'"),
        (lambda d: d.update(tasks={}), "tasks: the registry defines no task"),
        (
            lambda d: d["base_models"]["bloomz-7b1"].pop("hf_name"),
            "base_models.bloomz-7b1: missing required key 'hf_name'",
        ),
        (
            lambda d: d["tasks"]["finance/rating"].pop("label_set"),
            "tasks.finance/rating: missing required key 'label_set'",
        ),
        (
            lambda d: d["tasks"]["finance/rating"].update(label_set=["1", "1"]),
            "tasks.finance/rating.label_set: labels must be distinct",
        ),
        (
            lambda d: d["tasks"]["finance/rating"].update(label_set=[]),
            "tasks.finance/rating.label_set",
        ),
        (
            lambda d: d["tasks"]["finance/news"]["language_mapping"]["turkish"].update(
                base_model_key="gpt-5"
            ),
            "tasks.finance/news.language_mapping.turkish.base_model_key: 'gpt-5' is not in",
        ),
        (
            lambda d: d["tasks"]["finance/news"]["language_mapping"].update(klingon={}),
            "tasks.finance/news.language_mapping.klingon: unknown language 'klingon'",
        ),
        (
            lambda d: d["tasks"]["finance/news"]["language_mapping"].update(
                tr=d["tasks"]["finance/news"]["language_mapping"]["turkish"]
            ),
            "language turkish is mapped twice",
        ),
        (
            lambda d: d["tasks"]["finance/esci"].update(supported_languages=["en", "es"]),
            "tasks.finance/esci.supported_languages: ['en', 'es'] does not match",
        ),
        (
            lambda d: d["tasks"]["finance/esci"].update(supported_languages="en"),
            "tasks.finance/esci.supported_languages: expected a list of strings",
        ),
        (
            lambda d: d["tasks"]["finance/esci"].update(generation=[1]),
            "tasks.finance/esci.generation: expected object",
        ),
        (lambda d: d["tasks"]["finance/esci"].update(kind="chat"), "tasks.finance/esci.kind"),
        (
            lambda d: d["tasks"]["finance/esci"].update(base_model_key="nope"),
            "tasks.finance/esci.base_model_key: 'nope' is not in base_models",
        ),
        (
            lambda d: d["tasks"]["finance/pii"]["language_mapping"]["swedish"].update(
                adapter_path="../../etc"
            ),
            "tasks.finance/pii.language_mapping.swedish.adapter_path: '../../etc' must be",
        ),
        (
            lambda d: d["tasks"]["finance/pii"]["language_mapping"]["swedish"].update(
                adapter_path="/abs/dir"
            ),
            "adapter_path: '/abs/dir' must be a relative path",
        ),
        (
            lambda d: d["tasks"].update({"finance": d["tasks"]["finance/pii"]}),
            "tasks.finance: task keys are '<domain>/<task>'",
        ),
        (
            lambda d: d["tasks"]["finance/pii"]["language_mapping"].update(italian=[]),
            "tasks.finance/pii.language_mapping.italian: expected object",
        ),
        (lambda d: d.update(default_generation=3), "default_generation: expected object"),
    ],
)
def test_bad_registry_names_the_key(raw, mutate, expected):
    with pytest.raises(RegistryError) as err:
        parse_registry(_broken(raw, mutate))
    assert expected in str(err.value)


def test_load_errors(tmp_path):
    with pytest.raises(RegistryError, match="not found"):
        load_registry(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(RegistryError, match="not valid JSON"):
        load_registry(bad)
    bad.write_text("[]", encoding="utf-8")
    with pytest.raises(RegistryError, match="top level must be a JSON object"):
        load_registry(bad)


def test_language_mapping_accepts_codes_like_names(raw, tmp_path):
    doc = copy.deepcopy(raw)
    mapping = doc["tasks"]["finance/esci"]["language_mapping"]
    doc["tasks"]["finance/esci"]["language_mapping"] = {
        {"english": "en", "japanese": "JA", "spanish": "Spanish"}[k]: v for k, v in mapping.items()
    }
    path = tmp_path / "reg.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    reg = load_registry(path)
    got = reg.resolve("finance/esci", "ja")
    want = load_registry().resolve("finance/esci", "japanese")
    assert (got.language, got.base_model_key, got.adapter_name) == (
        want.language,
        want.base_model_key,
        want.adapter_name,
    )
    # template paths are relative to the registry file's directory
    assert got.template_path == tmp_path / "templates" / "esci.json"


def test_env_var_selects_the_registry(raw, tmp_path, monkeypatch):
    doc = copy.deepcopy(raw)
    del doc["tasks"]["finance/esci"]
    path = tmp_path / "reg.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    monkeypatch.setenv("EXPERT_REGISTRY_PATH", str(path))
    assert "finance/esci" not in load_registry().tasks


def test_ambiguous_short_task_name(raw):
    doc = copy.deepcopy(raw)
    doc["tasks"]["legal/rating"] = copy.deepcopy(doc["tasks"]["finance/rating"])
    reg = parse_registry(doc)
    with pytest.raises(UnknownExpert, match="ambiguous"):
        reg.task("rating")
    assert reg.domains == ["finance", "legal"]
    assert [t.name for t in reg.tasks_of_domain("finance")] == ["rating", "pii", "news", "esci"]
