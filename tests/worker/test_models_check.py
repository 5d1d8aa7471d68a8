"""``mole models check``: a table with one row per adapter, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.worker.enginehelpers import REGISTRY

ROOT = Path(__file__).resolve().parents[2]


def run_check(tiny: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        MOLE_MODELS_DIR=str(tiny / "models"),
        MOLE_ADAPTERS_DIR=str(tiny / "adapters"),
        HF_HUB_OFFLINE="1",
        MOLE_TORCH_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    return subprocess.run(
        [sys.executable, "-m", "mole", "models", "check", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def table_rows(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model "))
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def test_every_adapter_gets_a_row_with_its_label_and_confidence(tiny_models):
    keys = ["llama-2-7b-hf", "bloomz-7b1", "mistral-7B-Instruct-v0.3"]
    done = run_check(tiny_models, *keys, "--max-new-tokens", "4")
    assert done.returncode == 0, done.stdout + done.stderr
    header = next(line for line in done.stdout.splitlines() if line.startswith("model "))
    for column in ("model", "adapter", "load s", "memory", "label", "confidence", "ok"):
        assert column in header
    rows = table_rows(done.stdout)
    expected = [e for k in keys for e in REGISTRY.experts_for_base_model(k)]
    assert [r[1] for r in rows] == [e.adapter_name for e in expected]
    for row, expert in zip(rows, expected, strict=True):
        assert row[0] == expert.base_model_key
        assert row[-1] == "ok"
        assert float(row[2]) >= 0.0  # load seconds, a number (tiny models load in < 0.05 s)
        assert row[4] == "GiB"  # memory "0.01 GiB"
        if expert.kind == "classification":
            assert row[5] in expert.label_set
            assert 0.0 < float(row[6]) <= 1.0
        else:
            assert row[6] == "entities"
    assert f"{len(expected)}/{len(expected)} adapters answered" in done.stdout


def test_a_model_that_cannot_load_fails_its_rows_naming_why(tiny_models, tmp_path):
    broken = tmp_path / "models" / "bloomz-7b1"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    done = run_check(tiny_models, "bloomz-7b1", "--models-dir", str(tmp_path / "models"))
    assert done.returncode == 1
    assert "FAIL" in done.stdout
    assert str(broken) in done.stdout
    assert "model.safetensors" in done.stdout
    assert "0/1 adapters answered" in done.stdout


def test_unknown_key_is_a_usage_error(tiny_models):
    done = run_check(tiny_models, "no-such-model")
    assert done.returncode == 2
    assert "no-such-model" in done.stderr
    assert "llama-2-7b-hf" in done.stderr  # what the registry has
