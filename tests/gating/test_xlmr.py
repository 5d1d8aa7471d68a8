"""The XLM-R paths on a tiny random XLM-R generated offline: the original artifact formats
(domain_cls.pt v2; encoder.pth + router_<domain>.pth) load, compute what the formula says,
and feed the pipeline; bad artifacts are refused with typed errors."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch
import transformers

from mole.gating import ArtifactError, DomainWithoutTasks, GatingPipeline
from mole.gating.domain import (
    XLMRDomainClassifier,
    routing_prompt,
    train_domain_classifier,
)
from mole.gating.encoder_router import EncoderQRouter
from mole.gating.router import Example, QRouter, TrainConfig, read_examples
from mole.gating.settings import DEFAULT_TRAIN_DATA, GatingSettings
from mole.protocol.registry import DEFAULT_REGISTRY_PATH, parse_registry
from tests.gating.gating_samples import DESCRIPTIONS, SENTENCES

TASKS = ["rating", "pii", "news", "esci"]
H = 32  # the tiny model's hidden size


def _cls(encoder_dir, texts, state_dict=None):
    """CLS vectors computed independently of gating's code."""
    tok = transformers.AutoTokenizer.from_pretrained(encoder_dir, local_files_only=True)
    config = transformers.AutoConfig.from_pretrained(encoder_dir, local_files_only=True)
    model = transformers.XLMRobertaModel(config)
    if state_dict is None:
        state_dict = transformers.XLMRobertaModel.from_pretrained(
            encoder_dir, local_files_only=True
        ).state_dict()
    model.load_state_dict(state_dict)
    model.eval()
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).last_hidden_state[:, 0, :]


def _domain_artifact(domains, *, bias=None, alpha=0.3, seed=1, **extra):
    g = torch.Generator().manual_seed(seed)
    c = len(domains)
    art = {
        "format_version": 2,
        "model_name": "xlm-roberta-base",
        "domains": list(domains),
        "classifier": {
            "1.weight": torch.randn(c, H, generator=g),
            "1.bias": torch.tensor(bias, dtype=torch.float32) if bias else torch.zeros(c),
        },
        "prototypes_t": torch.randn(c, H, generator=g),
        "max_len": 128,
        "alpha_proto": alpha,
        "proto_temp": 10.0,
        "is_ready": True,
    }
    if bias:
        art["classifier"]["1.weight"] = torch.zeros(c, H)
    art.update(extra)
    return art


def _save(obj, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def test_domain_cls_original_format_matches_the_formula(tiny_xlmr, tmp_path):
    art = _domain_artifact(["finance", "general"])
    _save(art, tmp_path / "dom" / "domain_cls.pt")
    clf = XLMRDomainClassifier.load(tmp_path / "dom", encoder_dir=tiny_xlmr)
    pairs = [(DESCRIPTIONS["rating"], SENTENCES["en"]), (DESCRIPTIONS["pii"], SENTENCES["ja"])]
    preds = clf.predict_batch(pairs)

    h = _cls(tiny_xlmr, [routing_prompt(d, t) for d, t in pairs])
    head = torch.softmax(h @ art["classifier"]["1.weight"].T + art["classifier"]["1.bias"], -1)
    cos = (
        torch.nn.functional.normalize(h, dim=-1)
        @ torch.nn.functional.normalize(art["prototypes_t"], dim=-1).T
    )
    expected = 0.7 * head + 0.3 * torch.softmax(10.0 * cos, -1)
    for pred, row in zip(preds, expected, strict=True):
        assert pred.probabilities["finance"] == pytest.approx(float(row[0]), abs=1e-5)
        assert pred.probabilities["general"] == pytest.approx(float(row[1]), abs=1e-5)
        assert pred.domain == ["finance", "general"][int(row.argmax())]
        assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    # one text alone and the same text in a padded batch agree to float32 rounding (a
    # batch's matmuls may sum in another order: 0.72430879 vs 0.72430885 was seen)
    single = clf.predict(*pairs[0])
    assert single.domain == preds[0].domain
    assert single.probabilities == pytest.approx(preds[0].probabilities, abs=1e-6)


def test_domain_classifier_is_thread_safe(tiny_xlmr, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    _save(_domain_artifact(["finance", "general"]), tmp_path / "domain_cls.pt")
    clf = XLMRDomainClassifier.load(tmp_path, encoder_dir=tiny_xlmr)
    jobs = [(DESCRIPTIONS[t], SENTENCES[c]) for t in DESCRIPTIONS for c in SENTENCES]
    expected = [clf.predict(d, t).domain for d, t in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda job: clf.predict(*job).domain, jobs))
    assert got == expected


def test_transposed_prototypes_are_tolerated(tiny_xlmr, tmp_path):
    art = _domain_artifact(["finance", "general", "legal"])
    straight = art["prototypes_t"].clone()
    art["prototypes_t"] = straight.T.contiguous()  # [H x C]
    _save(art, tmp_path / "domain_cls.pt")
    clf = XLMRDomainClassifier.load(tmp_path, encoder_dir=tiny_xlmr)
    art["prototypes_t"] = straight
    _save(art, tmp_path / "b" / "domain_cls.pt")
    ref = XLMRDomainClassifier.load(tmp_path / "b", encoder_dir=tiny_xlmr)
    a = clf.predict(DESCRIPTIONS["news"], SENTENCES["fr"]).probabilities
    b = ref.predict(DESCRIPTIONS["news"], SENTENCES["fr"]).probabilities
    assert a == pytest.approx(b, abs=1e-6)


class _NotATensor:
    """A pickled object that weights_only loading must refuse to build."""

    def __init__(self):
        self.payload = "would run code on unpickle in a hostile file"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda a: a.update(format_version=1), "format_version 1"),
        (lambda a: a.pop("prototypes_t"), "missing key 'prototypes_t'"),
        (lambda a: a.update(prototypes_t=torch.zeros(2, H + 1)), r"prototypes_t has shape"),
        (lambda a: a["classifier"].pop("1.bias"), "'1.weight' and '1.bias'"),
        (lambda a: a.update(is_ready=False), "is_ready is false"),
        (lambda a: a.update(domains=[]), "non-empty list"),
        (lambda a: a.update(extra=_NotATensor()), "weights-only"),
    ],
)
def test_bad_domain_artifacts_are_refused(tiny_xlmr, tmp_path, edit, match):
    art = _domain_artifact(["finance", "general"])
    edit(art)
    _save(art, tmp_path / "domain_cls.pt")
    with pytest.raises(ArtifactError, match=match):
        XLMRDomainClassifier.load(tmp_path, encoder_dir=tiny_xlmr)


def test_missing_encoder_is_refused_without_a_download(tmp_path):
    _save(_domain_artifact(["finance", "general"]), tmp_path / "domain_cls.pt")
    with pytest.raises(ArtifactError, match="hub downloads are never attempted"):
        XLMRDomainClassifier.load(tmp_path)
    with pytest.raises(ArtifactError, match="not found"):
        XLMRDomainClassifier.load(tmp_path / "nowhere")


def test_training_writes_the_original_format(tiny_xlmr, tmp_path):
    finance = [(ex.description, "finance") for ex in read_examples(DEFAULT_TRAIN_DATA)[:60]]
    general = [
        (f"{s} {i}", "general")
        for i, s in enumerate(
            [
                "What a lovely day for a walk in the park",
                "My cat sleeps on the sofa all day",
                "The football match ended in a draw",
                "Recipe: mix flour, eggs and milk",
            ]
            * 10
        )
    ]
    rows = []
    report = train_domain_classifier(
        finance + general,
        encoder_dir=tiny_xlmr,
        out_dir=tmp_path / "out",
        epochs=5,
        progress=rows.append,
    )
    assert len(rows) == 5
    assert report["domains"] == ["finance", "general"]
    art = torch.load(tmp_path / "out" / "domain_cls.pt", weights_only=True)
    assert art["format_version"] == 2
    assert art["is_ready"] is True
    assert set(art["classifier"]) == {"1.weight", "1.bias"}
    assert tuple(art["classifier"]["1.weight"].shape) == (2, H)
    assert tuple(art["prototypes_t"].shape) == (2, H)
    assert art["max_len"] == 128
    assert art["alpha_proto"] == 0.3
    assert art["proto_temp"] == 10.0
    clf = XLMRDomainClassifier.load(tmp_path / "out", encoder_dir=tiny_xlmr)
    assert clf.domains == ["finance", "general"]
    assert clf.predict("Rate the sentiment", "Profits rose").domain in clf.domains


def test_train_domain_command(tiny_xlmr, tmp_path):
    from mole.gating import cli

    data = tmp_path / "d.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for i in range(12):
            f.write(
                json.dumps(
                    {
                        "text": f"profit and loss statement {i}",
                        "domain": "finance",
                        "description": "Rate it",
                    }
                )
                + "\n"
            )
            f.write(
                json.dumps({"text": f"holiday photos from the beach {i}", "domain": "general"})
                + "\n"
            )
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(
        [
            "train-domain",
            "--data",
            str(data),
            "--encoder",
            str(tiny_xlmr),
            "--out",
            str(tmp_path / "m"),
            "--epochs",
            "2",
        ]
    )
    assert cli.run(args) == 0
    assert torch.load(tmp_path / "m" / "domain_cls.pt", weights_only=True)["format_version"] == 2


def _two_domain_registry():
    raw = json.loads(DEFAULT_REGISTRY_PATH.read_text(encoding="utf-8"))
    doc = copy.deepcopy(raw)
    doc["tasks"]["legal/contracts"] = copy.deepcopy(raw["tasks"]["finance/pii"])
    return parse_registry(doc, path=DEFAULT_REGISTRY_PATH)


def _two_domain_router():
    router = QRouter({"finance": TASKS, "legal": ["contracts"]}, config=TrainConfig(epochs=20))
    router.train(
        [
            *read_examples(DEFAULT_TRAIN_DATA),
            Example("Find the clauses in this contract", "legal", "contracts"),
        ]
    )
    return router


@pytest.mark.parametrize(
    ("bias", "expect"),
    [([9.0, 0.0, 0.0], "finance"), ([0.0, 9.0, 0.0], "legal"), ([0.0, 0.0, 9.0], "general")],
)
def test_pipeline_with_several_domains(tiny_xlmr, tmp_path, bias, expect):
    _save(
        _domain_artifact(["finance", "legal", "general"], bias=bias, alpha=0.0),
        tmp_path / "dom" / "domain_cls.pt",
    )
    settings = GatingSettings(domain_model_dir=tmp_path / "dom", encoder_dir=tiny_xlmr)
    pipeline = GatingPipeline.load(
        _two_domain_registry(), settings=settings, router=_two_domain_router()
    )
    text, desc = SENTENCES["de"], DESCRIPTIONS["pii"]
    if expect == "general":  # a domain with no task: typed error, not a crash
        with pytest.raises(DomainWithoutTasks) as err:
            pipeline.route(text, desc)
        assert err.value.domain == "general"
        assert err.value.served_domains == ["finance", "legal"]
        return
    result = pipeline.route(text, desc)
    assert result.domain == expect
    assert result.domain_probabilities[expect] > 0.99
    assert result.task == ("pii" if expect == "finance" else "contracts")
    assert result.routing_path.startswith(f"german -> {expect} -> ")


def test_classifier_must_know_every_registry_domain(tiny_xlmr, tmp_path):
    _save(_domain_artifact(["finance", "general"]), tmp_path / "dom" / "domain_cls.pt")
    settings = GatingSettings(domain_model_dir=tmp_path / "dom", encoder_dir=tiny_xlmr)
    with pytest.raises(ArtifactError, match="cannot predict legal"):
        GatingPipeline.load(_two_domain_registry(), settings=settings, router=_two_domain_router())


class _Wrapper(torch.nn.Module):
    """The original's router module layout: ``self.net = Sequential(...)``."""

    def __init__(self, n):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(H, H), torch.nn.ReLU(), torch.nn.Linear(H, n)
        )


def _encoder_router_dir(tiny_xlmr, path, n_tasks=4, prefix="model."):
    config = transformers.AutoConfig.from_pretrained(tiny_xlmr, local_files_only=True)
    torch.manual_seed(7)  # different weights from the directory's own model.safetensors
    encoder = transformers.XLMRobertaModel(config)  # with its pooler, as the original saved
    state = {prefix + k: v for k, v in encoder.state_dict().items()}
    _save(state, path / "encoder.pth")
    head = _Wrapper(n_tasks)
    _save(head.state_dict(), path / "router_finance.pth")
    (path / "qrouter_config.json").write_text('{"encoder_name": "xlm-roberta-base"}')
    return encoder, head


def test_encoder_router_original_artifacts(tiny_xlmr, tmp_path):
    encoder, head = _encoder_router_dir(tiny_xlmr, tmp_path / "qr")
    assert set(torch.load(tmp_path / "qr" / "router_finance.pth", weights_only=True)) == {
        "net.0.weight",
        "net.0.bias",
        "net.2.weight",
        "net.2.bias",
    }
    router = EncoderQRouter.load(tmp_path / "qr", {"finance": TASKS}, encoder_dir=tiny_xlmr)
    descs = [DESCRIPTIONS[t] for t in TASKS]
    routes = router.route_batch(descs, "finance")
    h = _cls(tiny_xlmr, descs, state_dict=encoder.state_dict())
    with torch.no_grad():
        q = head.net(h)
    for route, row in zip(routes, q, strict=True):
        assert [route.q_values[t] for t in TASKS] == pytest.approx(row.tolist(), abs=1e-5)
        assert route.task == TASKS[int(row.argmax())]
    single = router.route(descs[0])  # batch padding changes float rounding only
    assert single.task == routes[0].task
    assert single.q_values == pytest.approx(routes[0].q_values, abs=1e-5)


def test_encoder_router_in_the_pipeline_and_online(tiny_xlmr, tmp_path):
    _encoder_router_dir(tiny_xlmr, tmp_path / "qr")
    settings = GatingSettings(encoder_router_dir=tmp_path / "qr", encoder_dir=tiny_xlmr)
    pipeline = GatingPipeline.load(settings=settings)
    assert isinstance(pipeline.router, EncoderQRouter)
    result = pipeline.route(SENTENCES["en"], DESCRIPTIONS["rating"])
    assert result.task in TASKS
    assert result.language.name == "english"
    router = pipeline.router
    desc = DESCRIPTIONS["news"]
    before = router.route(desc).q_values["news"]
    for _ in range(20):
        router.feedback(desc, "news", 1.0)
    after = router.route(desc).q_values["news"]
    assert abs(after - 1.0) < abs(before - 1.0)
    router.save(tmp_path / "qr")
    again = EncoderQRouter.load(tmp_path / "qr", {"finance": TASKS}, encoder_dir=tiny_xlmr)
    assert again.route(desc).q_values["news"] == pytest.approx(after, abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_tasks": 3}, "3 actions, but the registry's domain 'finance' has 4 tasks"),
        ({"prefix": ""}, "prefixed 'model.'"),
    ],
)
def test_bad_encoder_router_artifacts(tiny_xlmr, tmp_path, kwargs, match):
    _encoder_router_dir(tiny_xlmr, tmp_path, **kwargs)
    with pytest.raises(ArtifactError, match=match):
        EncoderQRouter.load(tmp_path, {"finance": TASKS}, encoder_dir=tiny_xlmr)


def test_encoder_router_missing_domain_file(tiny_xlmr, tmp_path):
    _encoder_router_dir(tiny_xlmr, tmp_path)
    with pytest.raises(ArtifactError, match=r"router_legal\.pth"):
        EncoderQRouter.load(
            tmp_path, {"finance": TASKS, "legal": ["contracts"]}, encoder_dir=tiny_xlmr
        )
