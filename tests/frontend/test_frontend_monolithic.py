"""SERVICE_MODE=monolithic: the dispatcher seam on the real in-process model pool, with the
tiny offline models (their predictions mean nothing; the label is still one of the task's).
"""

from __future__ import annotations

import pytest

from mole.frontend.dispatch import MonolithicDispatcher
from mole.frontend.gating_holder import GatingHolder
from tests.frontend.frontend_support import Api, make_components, make_settings

pytestmark = pytest.mark.slow


def test_classify_through_the_in_process_pool(
    tmp_path, hasher, registry, gating_pipeline, tiny_models, dead_broker_url
):
    pytest.importorskip("torch")
    from mole.worker.engine.pool import ModelPool
    from mole.worker.engine.settings import EngineSettings

    settings = EngineSettings(
        models_dir=tiny_models / "models", adapters_dir=tiny_models / "adapters", device="cpu"
    )
    dispatcher = MonolithicDispatcher(
        lambda: ModelPool(1, registry=registry, settings=settings, worker_id="mono-test")
    )
    components = make_components(
        make_settings(tmp_path, service_mode="monolithic"),
        hasher=hasher,
        gating=GatingHolder.loaded(gating_pipeline, registry),
        broker_url=dead_broker_url,
    )
    components.dispatcher = dispatcher
    api = Api(components)
    try:
        r = api.client.simulate_post(
            "/api/v1/classify",
            headers=api.user(),
            json={
                "text": "The quarterly revenue rose 12 percent, beating expectations.",
                "description": "Rate the sentiment of this financial statement",
                "options": {"return_probabilities": True},
            },
        )
        assert r.status_code == 200, r.text
        body = r.json
        expert = registry.task(f"{body['domain']}/{body['task']}")
        assert body["result"] in expert.label_set or body["task"] == "pii"
        assert body["tiny_model"] is True
        assert body["model"] == body["routing_path"].rsplit(" -> ", 1)[1]
        ready = api.client.simulate_get("/api/v1/health/ready").json
        assert ready["checks"]["broker"] == {
            "ready": True,
            "mode": "monolithic",
            "services": {body["model"]: 1},
        }
    finally:
        api.close()
