"""Fixtures for the frontend tests: real SQLite in tmp_path, a real broker process, real
worker processes (the fixed-answer test double under the real worker runtime), real
gating, and the app built by the factory with those parts (no monkeypatching)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mole.frontend.gating_holder import GatingHolder
from mole.frontend.limits import Limits
from mole.frontend.passwords import PasswordHasher
from mole.protocol.registry import load_registry
from tests.frontend.frontend_support import (
    FIXED_WORKER,
    Api,
    child,
    make_components,
    make_settings,
    wait_for,
)
from tests.support.procs import free_port


@pytest.fixture(scope="session")
def registry():
    return load_registry()


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def broker_url(logs_dir) -> Iterator[str]:
    """A real broker process on a free loopback port."""
    url = f"tcp://127.0.0.1:{free_port()}"
    with child([sys.executable, "-m", "mole.broker", "--bind", url], logs_dir / "broker.log") as p:
        from mole.protocol.client import Client

        with Client(url, timeout=5.0) as client:
            wait_for(lambda: p.poll() is None and client.status(timeout=1.0), 30, "the broker")
        yield url


@pytest.fixture(scope="session")
def fixed_workers(broker_url, registry, logs_dir) -> Iterator[list[str]]:
    """One worker process serving every base model with the fixed-answer test double."""
    services = sorted(registry.base_models)
    args = [sys.executable, str(FIXED_WORKER), "--broker", broker_url]
    for service in services:
        args += ["--service", service]
    with child(args, logs_dir / "fixed_worker.log") as proc:
        from mole.protocol.client import Client

        def all_up() -> bool:
            assert proc.poll() is None, "fixed worker died; see fixed_worker.log"
            with Client(broker_url, timeout=2.0) as client:
                status = client.status(timeout=2.0)
            live = {k for k, v in status["services"].items() if v.get("workers")}
            return set(services) <= live

        wait_for(all_up, 60, "fixed workers to register")
        yield services


@pytest.fixture(scope="session")
def gating_pipeline(registry):
    """The real gating pipeline (fastText language id, registry, default task router)."""
    from mole.gating import GatingPipeline

    return GatingPipeline.load(registry=registry)


@pytest.fixture(scope="session")
def hasher() -> PasswordHasher:
    return PasswordHasher("cheap")


@pytest.fixture
def dead_broker_url() -> str:
    """An address where nothing listens (the broker is down)."""
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture
def offline_api(tmp_path, hasher, registry, dead_broker_url) -> Iterator[Api]:
    """The app with no broker running and gating not loaded (auth, errors, health)."""
    settings = make_settings(tmp_path)
    gating = GatingHolder(registry_path=registry.path, loader=lambda reg: None)
    api = Api(make_components(settings, hasher=hasher, gating=gating, broker_url=dead_broker_url))
    yield api
    api.close()


@pytest.fixture
def api(tmp_path, hasher, registry, gating_pipeline, broker_url, fixed_workers) -> Iterator[Api]:
    """The app on real gating, a real broker and real worker processes."""
    settings = make_settings(tmp_path)
    gating = GatingHolder.loaded(gating_pipeline, registry)
    api = Api(make_components(settings, hasher=hasher, gating=gating, broker_url=broker_url))
    yield api
    api.close()


def _limited_api(tmp_path, hasher, gating, broker_url, clock, **limits) -> Api:
    settings = make_settings(tmp_path, **limits)
    components = make_components(settings, hasher=hasher, gating=gating, broker_url=broker_url)
    components.limits = Limits.from_settings(settings, clock=clock)
    return Api(components)


@pytest.fixture
def make_api(tmp_path, hasher, registry, gating_pipeline, broker_url, fixed_workers):
    made = []

    def make(clock, **limits):
        api = _limited_api(
            tmp_path,
            hasher,
            GatingHolder.loaded(gating_pipeline, registry),
            broker_url,
            clock,
            **limits,
        )
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def make_offline(tmp_path, hasher, registry, dead_broker_url):
    made = []

    def make(clock, **limits):
        api = _limited_api(
            tmp_path,
            hasher,
            GatingHolder(registry_path=registry.path, loader=lambda reg: None),
            dead_broker_url,
            clock,
            **limits,
        )
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()
