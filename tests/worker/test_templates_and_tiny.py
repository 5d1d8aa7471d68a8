"""Prompt templates per family, token-budget truncation, and the tiny model generator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mole.protocol.registry import load_registry
from mole.worker.engine.errors import ModelLoadError
from mole.worker.engine.templates import Template, load_template, render_within
from mole.worker.tiny import TINY_MARKER, build_tokenizer, generate

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "configs" / "templates"
FAMILIES = ("llama2", "llama3", "qwen2", "mistral", "bloom", "xglm")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize("task", ["rating", "news", "esci", "pii"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_task_has_a_prompt_for_every_family(task, family):
    template = load_template(TEMPLATES / f"{task}.json", "some-key", family)
    fields = set(template.fields)
    assert fields == ({"query", "product"} if task == "esci" else {"input"})


def test_registry_template_paths_exist():
    for task in load_registry().tasks.values():
        for expert in task.experts.values():
            assert expert.template_path.is_file(), expert.template_path


def test_lookup_prefers_the_base_model_key_and_names_what_is_missing(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"llama2": "family {{input}}", "my-key": {"prompt": "key"}}))
    assert load_template(path, "my-key", "llama2").prompt == "key"
    assert load_template(path, "other", "llama2").prompt == "family {{input}}"
    with pytest.raises(ModelLoadError, match="qwen2"):
        load_template(path, "other", "qwen2")
    with pytest.raises(ModelLoadError, match="not found"):
        load_template(tmp_path / "missing.json", "k", "llama2")


def test_truncation_cuts_only_the_input(tokenizer):
    template = Template("Instruction: rate it.\nReview: {{input}}\nRating:", " ")
    text = "word " * 500
    rendered = render_within(template, {"input": text}, tokenizer, 60)
    assert rendered.truncated
    assert len(rendered.input_ids) <= 60
    assert rendered.text.startswith("Instruction: rate it.\nReview: word")
    assert rendered.text.endswith("\nRating:")
    short = render_within(template, {"input": "fine"}, tokenizer, 60)
    assert not short.truncated
    assert short.text.endswith("Review: fine\nRating:")


def test_truncation_shares_the_budget_between_query_and_product(tokenizer):
    template = Template("Q: {{query}}\nP: {{product}}\nA:")
    rendered = render_within(template, {"query": "shoes", "product": "red " * 300}, tokenizer, 40)
    assert rendered.truncated
    assert len(rendered.input_ids) <= 40
    assert "Q: shoes\n" in rendered.text
    assert rendered.text.endswith("\nA:")


def test_template_longer_than_budget_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="template alone"):
        render_within(Template("x " * 100 + "{{input}}"), {"input": "y"}, tokenizer, 10)


def test_tiny_models_layout_markers_and_reproducibility(tiny_models, tmp_path):
    registry = load_registry()
    for key in registry.base_models:
        marker = json.loads((tiny_models / "models" / key / TINY_MARKER).read_text())
        assert marker["tiny"] is True
        assert marker["base_model_key"] == key
        assert 0.3e6 < marker["parameters"] < 3e6
        assert (tiny_models / "models" / key / "tokenizer.json").is_file()
    for task in registry.tasks.values():
        for expert in task.experts.values():
            adapter = tiny_models / "adapters" / expert.adapter_path
            assert (adapter / "adapter_config.json").is_file()
            assert (adapter / "adapter_model.safetensors").is_file()
    tok = json.loads((tiny_models / "models" / "bloomz-7b1" / "tokenizer_config.json").read_text())
    assert tok.get("padding_side") == "left"
    assert tok.get("pad_token") == "<pad>"
    # the same generator run again writes byte-identical files
    generate(tmp_path, registry=registry, keys=["bloomz-7b1"])
    for path in (tmp_path / "models" / "bloomz-7b1").iterdir():
        assert (
            path.read_bytes() == (tiny_models / "models" / "bloomz-7b1" / path.name).read_bytes()
        ), path.name
    adapter = "finance/sentiment_analysis/bloomz-7b1"
    for path in (tmp_path / "adapters" / adapter).iterdir():
        assert path.read_bytes() == (tiny_models / "adapters" / adapter / path.name).read_bytes(), (
            path.name
        )


def test_lora_weights_are_trained_not_zero(tiny_models):
    from safetensors.torch import load_file

    weights = load_file(
        str(tiny_models / "adapters" / "finance/esci/LLama-3-8.1B" / "adapter_model.safetensors")
    )
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b
    assert all(float(t.abs().max()) > 0 for t in lora_b)


def test_mole_models_tiny_command(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mole",
            "models",
            "tiny",
            "--out",
            str(tmp_path),
            "--model-key",
            "facebook/xglm-7.5B",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert "predictions mean nothing" in out.stdout
    assert (tmp_path / "models" / "facebook/xglm-7.5B" / TINY_MARKER).is_file()
    assert (tmp_path / "adapters" / "finance/news_classification/xglm-7.5B").is_dir()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "mole",
            "models",
            "tiny",
            "--out",
            str(tmp_path),
            "--model-key",
            "nope",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert bad.returncode == 2
    assert "nope" in bad.stderr
