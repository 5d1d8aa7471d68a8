"""The 4-bit nf4 load path (bitsandbytes) runs on CPU when forced, with LoRA on top."""

import math

import pytest

from tests.worker.enginehelpers import REGISTRY, load_engine, payload_for

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")


def test_nf4_on_cpu_loads_and_classifies(tiny_models):
    engine = load_engine(tiny_models, "llama-3.1-8b-instruct", force_4bit=True)
    assert engine.loaded.quantized
    assert engine.metadata()["quantized_4bit"] is True
    linear4 = [m for m in engine.loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4, "no layer was quantized to 4 bits"
    assert linear4[0].weight.quant_state.quant_type == "nf4"
    expert = REGISTRY.resolve("finance/esci", "en")
    reply = engine.infer(payload_for(expert))
    assert reply["result"] in expert.label_set
    assert math.isclose(sum(reply["probabilities"].values()), 1.0, abs_tol=1e-6)


def test_nf4_is_not_used_on_cpu_unless_forced(tiny_models):
    engine = load_engine(tiny_models, "llama-3.1-8b-instruct", warmup=False)
    assert REGISTRY.base_models["llama-3.1-8b-instruct"].load_in_4bit
    assert not engine.loaded.quantized
