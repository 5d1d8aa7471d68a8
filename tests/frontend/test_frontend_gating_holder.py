"""The gating holder: background load, readiness, failures kept, reloads followed across
worker processes (two holders sharing a stamp file stand for two gunicorn workers)."""

from __future__ import annotations

import json
import shutil

import pytest

from mole.frontend.gating_holder import GatingHolder, NotReady
from mole.protocol.registry import DEFAULT_REGISTRY_PATH, RegistryError
from tests.frontend.frontend_support import wait_for


def test_background_load_flips_ready(registry):
    holder = GatingHolder(registry_path=registry.path)
    assert not holder.ready
    assert holder.state() == {"ready": False, "detail": "gating is loading"}
    with pytest.raises(NotReady):
        holder.get()
    holder.start().join(60)
    assert holder.ready
    assert holder.state()["tasks"] == 4
    pipeline, _reg = holder.get()
    assert (
        pipeline.route(
            "The revenue rose sharply this quarter, beating forecasts.", "Rate the sentiment"
        ).language.name
        == "english"
    )


def test_a_failed_load_is_reported_not_hidden(tmp_path):
    holder = GatingHolder(registry_path=tmp_path / "missing.json")
    holder.load()
    state = holder.state()
    assert state["ready"] is False
    assert "registry file not found" in state["detail"]


def test_reload_is_followed_by_the_other_worker_processes(tmp_path):
    path = tmp_path / "registry.json"
    shutil.copy(DEFAULT_REGISTRY_PATH, path)
    stamp = tmp_path / "registry.reload"
    built = []

    def loader(registry):
        built.append(registry)
        return object()  # the pipeline is not what this test is about

    a = GatingHolder(registry_path=path, loader=loader, stamp_path=stamp, check_interval_s=0)
    b = GatingHolder(registry_path=path, loader=loader, stamp_path=stamp, check_interval_s=0)
    a.load()
    b.load()
    raw = json.loads(path.read_text())
    del raw["tasks"]["finance/esci"]
    path.write_text(json.dumps(raw))
    assert len(a.reload().tasks) == 3
    # b notices the stamp on its next get and rebuilds from the file in a thread,
    # serving the old registry until the new one is built
    assert len(b.get()[1].tasks) in (3, 4)
    wait_for(lambda: len(b.get()[1].tasks) == 3, 10, "b to follow the reload")
    raw["tasks"]["finance/news"]["label_set"] = ["dup", "dup"]
    path.write_text(json.dumps(raw))
    with pytest.raises(RegistryError, match=r"finance/news\.label_set"):
        a.reload()
    assert len(a.get()[1].tasks) == 3
    assert len(b.get()[1].tasks) == 3
