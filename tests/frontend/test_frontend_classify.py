"""/classify, /classify/batch, /classify/stats, admin and readiness on real parts: real
gating, a real broker process, and worker processes running the fixed-answer test double
under the real worker runtime."""

from __future__ import annotations

import json
import shutil
import time

import msgpack
import pytest

from mole.frontend.gating_holder import GatingHolder
from tests.frontend.frontend_support import Api, make_components, make_settings

EN = "The quarterly revenue rose 12 percent and the company raised its full-year outlook."
RATE = "Rate the sentiment of this financial statement"
PII = "Extract personal information entities such as names and addresses"


def classify(api, headers, **body):
    return api.client.simulate_post("/api/v1/classify", json=body, headers=headers)


def test_classify_answers_with_every_field(api):
    h = api.user()
    r = classify(api, h, text=EN, description=RATE)
    assert r.status_code == 200, r.text
    b = r.json
    assert r.headers["X-Request-ID"] == b["request_id"]
    assert b["language"] == "english"
    assert b["domain"] == "finance"
    assert b["task"] in ("rating", "news", "pii", "esci")
    model = b["routing_path"].rsplit(" -> ", 1)[1]
    assert b["routing_path"] == f"english -> finance -> {b['task']} -> {model}"
    assert b["model"] == model
    assert b["worker_id"].startswith("fixed-")
    registry = api.components.gating.registry
    labels = registry.task(f"finance/{b['task']}").label_set
    if b["task"] != "pii":
        assert b["result"] == labels[0]  # the test double's fixed answer
    assert b["confidence"] == 0.5
    assert b["tiny_model"] is True
    assert {"language_ms", "task_ms", "gating_ms", "dispatch_ms", "inference_ms"} <= set(
        b["timings"]
    )
    assert b["processing_time_ms"] >= b["timings"]["dispatch_ms"]
    assert "probabilities" not in b
    assert "raw_response" not in b


def test_classify_options_return_probabilities_and_raw_response(api):
    r = classify(
        api,
        api.user(),
        text=EN,
        description=RATE,
        options={"return_probabilities": True, "return_raw_response": True},
    )
    assert r.status_code == 200
    assert abs(sum(r.json["probabilities"].values()) - 1.0) < 1e-9
    assert r.json["raw_response"].strip() == r.json["result"]


def test_rating_routes_to_the_registry_expert(api):
    r = classify(api, api.user(), text=EN, description=RATE, task="rating")
    assert r.status_code == 200, r.text
    expert = api.components.gating.registry.resolve("finance/rating", "en")
    path = f"english -> finance(given) -> rating(given) -> {expert.base_model_key}"
    assert r.json["routing_path"] == path
    assert r.json["adapter"] == expert.adapter_name


def test_pii_has_entities_with_offsets_and_result_is_json_text(api):
    text = "Contact John Smith at 12 Baker Street, London, phone 020 7946 0958."
    r = classify(api, api.user(), text=text, description=PII, task="finance/pii")
    assert r.status_code == 200, r.text
    assert r.json["task"] == "pii"
    entities = r.json["entities"]
    assert entities
    assert set(entities[0]) == {"text", "label", "start", "end"}
    assert json.loads(r.json["result"]) == entities
    assert text[entities[0]["start"] : entities[0]["end"]] == entities[0]["text"]


def test_unsupported_language_is_422_listing_the_served_ones(api):
    text = "Выручка компании за квартал выросла на двенадцать процентов по сравнению с прошлым."
    r = classify(api, api.user(), text=text, description=RATE)
    assert r.status_code == 422, r.text
    assert r.json["error"] in ("unsupported_language", "language_uncertain")
    assert "english" in " ".join(r.json["served"]).lower() or "en" in r.json["served"]
    assert r.json["field"] == "text"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"description": RATE}, "text"),
        ({"text": EN}, "description"),
        ({"text": 42, "description": RATE}, "text"),
        ({"text": "   ", "description": RATE}, "text"),
        ({"text": EN, "description": RATE, "options": []}, "options"),
        (
            {"text": EN, "description": RATE, "options": {"return_probabilities": "yes"}},
            "options.return_probabilities",
        ),
        ({"text": EN, "description": RATE, "query": 5}, "query"),
    ],
)
def test_classify_validation_names_the_field(api, body, field):
    r = api.client.simulate_post("/api/v1/classify", json=body, headers=api.user())
    assert r.status_code == 422, r.text
    assert r.json["field"] == field, r.text


def test_text_over_the_limit_is_422(
    tmp_path, hasher, registry, gating_pipeline, broker_url, fixed_workers
):
    api = Api(
        make_components(
            make_settings(tmp_path, max_text_chars=100),
            hasher=hasher,
            gating=GatingHolder.loaded(gating_pipeline, registry),
            broker_url=broker_url,
        )
    )
    try:
        r = classify(api, api.user(), text="word " * 30, description=RATE)
        assert r.status_code == 422
        assert r.json["field"] == "text"
    finally:
        api.close()


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("overloaded", 429),
        ("worker_lost", 502),
        ("bad_request", 422),
        ("internal", 502),
        ("no_worker", 503),
    ],
)
def test_bus_errors_become_http_statuses(api, code, status):
    r = classify(api, api.user(), text=f"{EN} __error:{code}", description=RATE)
    assert r.status_code == status, r.text
    assert r.json["error"] == code
    if status in (429, 503):
        assert int(r.headers["Retry-After"]) > 0


@pytest.mark.timing
def test_one_deadline_for_the_whole_request_gives_504(
    tmp_path, hasher, registry, gating_pipeline, broker_url, fixed_workers
):
    api = Api(
        make_components(
            make_settings(tmp_path, request_timeout_s=1.0),
            hasher=hasher,
            gating=GatingHolder.loaded(gating_pipeline, registry),
            broker_url=broker_url,
        )
    )
    try:
        started = time.monotonic()
        r = classify(api, api.user(), text=f"{EN} __sleep:4", description=RATE)
        elapsed = time.monotonic() - started
        assert r.status_code == 504, r.text
        assert r.json["error"] == "deadline_exceeded", r.text
        assert elapsed < 3.5
    finally:
        api.close()


def test_no_worker_for_the_model_is_503_with_retry_after(
    tmp_path, hasher, broker_url, fixed_workers
):
    """A registry whose every expert names a base model no worker serves."""
    from mole.gating import GatingPipeline
    from mole.protocol.registry import DEFAULT_REGISTRY_PATH, load_registry

    raw = json.loads(DEFAULT_REGISTRY_PATH.read_text())
    raw["base_models"]["ghost-model"] = {"hf_name": "nobody/ghost", "family": "llama2"}
    for task in raw["tasks"].values():
        task["base_model_key"] = "ghost-model"
        for entry in task["language_mapping"].values():
            entry["base_model_key"] = "ghost-model"
    path = tmp_path / "ghost_registry.json"
    path.write_text(json.dumps(raw))
    ghost = load_registry(path)
    api = Api(
        make_components(
            make_settings(tmp_path, request_timeout_s=1.5),
            hasher=hasher,
            gating=GatingHolder.loaded(GatingPipeline.load(registry=ghost), ghost),
            broker_url=broker_url,
        )
    )
    try:
        r = classify(api, api.user(), text=EN, description=RATE)
        assert r.status_code == 503, r.text
        assert r.json["error"] == "no_worker"
        assert "ghost-model" in r.json["detail"]
        assert r.headers["Retry-After"] == "5"
        stats = api.client.simulate_get("/api/v1/classify/stats", headers=api.user()).json
        assert stats["live_workers"] == {"ghost-model": 0}
    finally:
        api.close()


def test_msgpack_classify(api):
    r = api.client.simulate_post(
        "/api/v1/classify",
        body=msgpack.packb({"text": EN, "description": RATE}),
        headers={
            **api.user(),
            "Content-Type": "application/msgpack",
            "Accept": "application/msgpack",
        },
    )
    assert r.status_code == 200
    assert msgpack.unpackb(r.content)["language"] == "english"


@pytest.mark.timeout(60)
def test_batch_runs_items_concurrently_each_with_its_outcome(api):
    # the fixed worker answers these six only once all six are in its hands at the same
    # time: run one after another, each would fail with "internal" (not concurrent)
    items = [{"text": f"{EN} __rendezvous:6", "description": RATE} for _ in range(6)]
    items.insert(2, {"text": EN})  # invalid: no description
    items.append({"text": f"{EN} __error:overloaded", "description": RATE})
    r = api.client.simulate_post(
        "/api/v1/classify/batch", json={"items": items}, headers=api.user()
    )
    assert r.status_code == 200, r.text
    b = r.json
    assert b["successful"] == 6
    assert b["failed"] == 2
    assert [x["index"] for x in b["results"]] == list(range(8))
    # a failed item carries the top level's error fields, with its own request id
    assert b["results"][2] == {
        "index": 2,
        "ok": False,
        "error": "validation_error",
        "detail": "items[2].description: is required (a non-empty string)",
        "field": "items[2].description",
        "request_id": f"{b['request_id']}-2",
    }
    assert b["results"][7]["error"] == "overloaded"
    assert b["results"][7]["request_id"] == f"{b['request_id']}-7"
    assert b["results"][0]["result"]["language"] == "english"
    assert [x["index"] for x in b["results"] if x["ok"]] == [0, 1, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "body",
    [{"items": []}, {"items": "x"}, {}, {"items": [{"text": EN, "description": RATE}] * 101}],
)
def test_batch_shape_and_limit(api, body):
    r = api.client.simulate_post("/api/v1/classify/batch", json=body, headers=api.user())
    assert r.status_code == 422
    assert r.json["field"] == "items"


def test_stats_are_real_figures(api):
    h = api.user()
    for _ in range(3):
        assert classify(api, h, text=EN, description=RATE).status_code == 200
    classify(api, h, text=f"{EN} __error:overloaded", description=RATE)
    s = api.client.simulate_get("/api/v1/classify/stats", headers=h).json
    registry = api.components.gating.registry
    assert s["total_tasks"] == len(registry.tasks) == 4
    assert s["total_domains"] == 1
    assert s["domains"]["finance"]
    assert "english" in s["all_languages"]
    assert all(n >= 1 for n in s["live_workers"].values())
    a = s["analytics"]
    assert a["total_requests"] == 4
    assert a["total_errors"] == 1
    assert a["by_language"]["english"] == {"requests": 4, "errors": 1}
    assert a["errors_by_code"] == {"overloaded": 1}
    assert a["latency_ms"]["window"] == 3
    assert a["latency_ms"]["p50"] > 0
    assert sum(v["requests"] for v in a["by_model"].values()) == 4


def test_request_text_is_never_stored(api):
    secret = "Card 4929-1234-5678-9012 belongs to Zebulon Quux " + EN
    classify(api, api.user(), text=secret, description=RATE)
    api.components.analytics.flush()
    for path in api.components.settings.data_dir.iterdir():
        assert b"Zebulon" not in path.read_bytes(), path


def test_ready_once_gating_is_loaded_and_the_broker_answers(api):
    r = api.client.simulate_get("/api/v1/health/ready")
    assert r.status_code == 200, r.text
    assert r.json["checks"]["gating"]["ready"]
    assert r.json["checks"]["broker"]["ready"]


def test_admin_workers_lists_the_live_workers(api):
    r = api.client.simulate_get("/api/v1/admin/workers", headers=api.user("root", admin=True))
    assert r.status_code == 200
    services = {w["service"] for w in r.json["workers"] if w["id"].startswith("fixed-")}
    assert set(fixed_services(api)) <= services
    assert (
        api.client.simulate_get("/api/v1/admin/workers", headers=api.user("pleb")).status_code
        == 403
    )


def fixed_services(api) -> list[str]:
    return sorted(api.components.gating.registry.base_models)


def test_registry_reload_validates_first_and_keeps_the_old_one(
    tmp_path, hasher, registry, gating_pipeline, broker_url, fixed_workers
):
    from mole.protocol.registry import DEFAULT_REGISTRY_PATH

    path = tmp_path / "registry.json"
    shutil.copy(DEFAULT_REGISTRY_PATH, path)
    holder = GatingHolder(registry_path=path)
    holder.load()
    assert holder.ready
    api = Api(
        make_components(
            make_settings(tmp_path), hasher=hasher, gating=holder, broker_url=broker_url
        )
    )
    try:
        admin = api.user("root", admin=True)
        raw = json.loads(path.read_text())
        raw["tasks"]["finance/rating"]["label_set"] = []
        path.write_text(json.dumps(raw))
        r = api.client.simulate_post("/api/v1/admin/registry/reload", headers=admin)
        assert r.status_code == 422
        assert r.json["error"] == "invalid_registry"
        assert r.json["field"] == "tasks.finance/rating.label_set"
        assert "old one stays" in r.json["detail"]
        assert classify(api, admin, text=EN, description=RATE).status_code == 200
        shutil.copy(DEFAULT_REGISTRY_PATH, path)
        r = api.client.simulate_post("/api/v1/admin/registry/reload", headers=admin)
        assert r.status_code == 200
        assert r.json["reloaded"] is True
        g = api.client.simulate_get("/api/v1/admin/registry", headers=admin).json
        assert len(g["tasks"]) == 4
        assert "english" in g["languages"]
        assert (
            api.client.simulate_post(
                "/api/v1/admin/registry/reload", headers=api.user("pleb")
            ).status_code
            == 403
        )
    finally:
        api.close()
