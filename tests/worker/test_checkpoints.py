"""Real checkpoint formats load offline: sharded safetensors with an index, the Hugging
Face cache layout under HF_HUB_OFFLINE=1, and a pre-quantised bnb-4bit checkpoint through
a worker process; an incomplete checkpoint is refused naming the path and the file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from mole.worker.engine.errors import ModelLoadError
from tests.worker.checkpoints import copy_tree, hf_cache_snapshot_dir, save_as_hub_ships_it
from tests.worker.enginehelpers import REGISTRY, load_engine
from tests.worker.exactness import Reference, payload
from tests.worker.rawbroker import RawBroker, reply_of

ROOT = Path(__file__).resolve().parents[2]
TEXT = "Die Bank hat die Gebühren erhöht.\nDer Service ist trotzdem gut."


@pytest.fixture(scope="module")
def sharded(real_tokenizer_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """llama-3.1's tiny model on Llama-3's real tokenizer, as the hub ships a model."""
    out = tmp_path_factory.mktemp("hub") / "models"
    save_as_hub_ships_it(
        real_tokenizer_models / "models" / "llama-3.1-8b-instruct",
        out / "llama-3.1-8b-instruct",
    )
    return out


def test_sharded_checkpoint_loads_and_answers_as_the_original(sharded, real_tokenizer_models):
    directory = sharded / "llama-3.1-8b-instruct"
    shards = sorted(p.name for p in directory.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    for name in ("model.safetensors.index.json", "generation_config.json", "tokenizer.json"):
        assert (directory / name).is_file(), name
    assert not (directory / "model.safetensors").exists()
    engine = load_engine(real_tokenizer_models, "llama-3.1-8b-instruct", models_dir=sharded)
    original = load_engine(real_tokenizer_models, "llama-3.1-8b-instruct", warmup=False)
    assert engine.loaded.source == str(directory)
    expert = REGISTRY.resolve("finance/esci", "en")
    got = engine.infer(payload(expert, TEXT))["probabilities"]
    want = original.infer(payload(expert, TEXT))["probabilities"]
    assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("remove", ["a shard", "tokenizer", "config.json"])
def test_incomplete_checkpoint_names_the_path_and_the_missing_file(
    sharded, real_tokenizer_models, tmp_path, remove
):
    broken = copy_tree(sharded / "llama-3.1-8b-instruct", tmp_path / "m" / "llama-3.1-8b-instruct")
    if remove == "a shard":
        victim = sorted(broken.glob("model-*-of-*.safetensors"))[1].name
        (broken / victim).unlink()
        expected = victim
    elif remove == "tokenizer":
        (broken / "tokenizer.json").unlink()
        expected = "tokenizer.json"
    else:
        (broken / "config.json").unlink()
        expected = "config.json"
    with pytest.raises(ModelLoadError) as err:
        load_engine(real_tokenizer_models, "llama-3.1-8b-instruct", models_dir=tmp_path / "m")
    message = str(err.value)
    assert str(broken) in message
    assert expected in message
    assert "incomplete" in message


def test_prequantised_bnb_4bit_checkpoint_in_the_hf_cache_serves_through_a_worker(
    real_tokenizer_models, tmp_path
):
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is in the worker extra")
    key = "qwen2.5-7b-instruct"
    repo_id = REGISTRY.base_models[key].hf_name  # unsloth/Qwen2.5-7B-Instruct-bnb-4bit
    cache = tmp_path / "hub"
    snapshot = save_as_hub_ships_it(
        real_tokenizer_models / "models" / key,
        hf_cache_snapshot_dir(cache, repo_id),
        quantize_4bit=True,
        shard="2MB",
    )
    assert len(list(snapshot.glob("model-*-of-*.safetensors"))) > 1
    assert '"quant_method": "bitsandbytes"' in (snapshot / "config.json").read_text()

    # the reference: plain transformers + peft on the same files
    expert = REGISTRY.resolve("finance/rating", "ja")
    reference = Reference(snapshot)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in reference.base.modules())

    empty = tmp_path / "no-local-copies"
    empty.mkdir()
    env = dict(
        os.environ,
        HF_HUB_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        MOLE_MODELS_DIR=str(empty),
        MOLE_ADAPTERS_DIR=str(real_tokenizer_models / "adapters"),
        MOLE_TORCH_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    broker = RawBroker()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mole.worker", "--broker", broker.url, "--model-key", key],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ident, ready = broker.expect(timeout=180)
        body = payload(expert, TEXT)
        broker.request(ident, b"t1", body, request_id="q1", ttl_ms=120_000)
        _, final = broker.expect(timeout=120)
        header, reply = reply_of(final)
    finally:
        proc.terminate()
        log = proc.communicate(timeout=30)[0]
        broker.stop()
    assert header.ok, (header, log)
    meta = msgpack.unpackb(ready.metadata, raw=False)
    assert meta["quantized_4bit"] is True
    assert "nf4 as saved" in log
    assert str(snapshot) in log
    # the prompt as the worker renders it: same tokenizer files, same template
    job = load_engine(real_tokenizer_models, key, warmup=False).prepare(body)
    want = reference.probabilities(
        real_tokenizer_models / "adapters" / expert.adapter_path,
        job.prompt_text,
        job.prompt.template.answer_prefix,
        expert.label_set,
    )
    assert reply["probabilities"] == pytest.approx(want, abs=1e-5)
    assert reply["adapter"] == expert.adapter_name


def test_incomplete_hf_cache_snapshot_is_named(sharded, real_tokenizer_models, tmp_path):
    """A download cut short: refs/main and a snapshot without config.json or shards."""
    cache = tmp_path / "hub"
    snapshot = hf_cache_snapshot_dir(cache, "meta-llama/Llama-3.1-8B-Instruct")
    (snapshot / "tokenizer.json").write_bytes(
        (sharded / "llama-3.1-8b-instruct" / "tokenizer.json").read_bytes()
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mole",
            "models",
            "check",
            "llama-3.1-8b-instruct",
            "--models-dir",
            str(tmp_path / "none"),
            "--adapters-dir",
            str(real_tokenizer_models / "adapters"),
        ],
        cwd=ROOT,
        env=dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert str(snapshot) in done.stdout
    assert "config.json" in done.stdout
    assert "model.safetensors" in done.stdout
