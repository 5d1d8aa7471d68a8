"""The real expert worker (`python -m worker` on a tiny model) takes its CURVE keys from
the environment: with an allow-listed key it registers and serves; with half the keys
configured it refuses to start, before spending time loading a model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.security.conftest import reply, request, status
from tests.support.peers import ROOT, child_env, unpack
from tests.support.procs import must_wait

pytestmark = pytest.mark.timeout(180)
SERVICE = "llama-2-7b-hf"


def _model_worker(secure, tiny_models, **keys: str) -> subprocess.Popen:
    log = open(secure.tmp / "model-worker.log", "ab")
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mole.worker",
                "--model-key",
                SERVICE,
                "--broker",
                secure.url,
                "--heartbeat-interval",
                "0.5",
                "--liveness",
                "3",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(
                MOLE_MODELS_DIR=str(tiny_models / "models"),
                MOLE_ADAPTERS_DIR=str(tiny_models / "adapters"),
                **keys,
            ),
        )
    finally:
        log.close()
    secure.procs.append(proc)
    return proc


def test_model_worker_registers_with_its_key_and_serves(secure, tiny_models):
    secure.allow_keys("worker-a", "client-a")
    secure.start()
    _model_worker(
        secure,
        tiny_models,
        MOLE_CURVE_SERVER_KEY=str(secure.keys / "broker.key"),
        MOLE_CURVE_SECRET_KEY=str(secure.keys / "worker-a.key_secret"),
    )
    client = secure.socket("client-a")

    def registered():
        st = status(client)
        return st and [w for w in st["workers"] if w["service"] == SERVICE]

    workers = must_wait(registered, "the model worker to register", timeout=120)
    assert workers, (secure.tmp / "model-worker.log").read_text()[-2000:]
    assert workers[0]["curve_key"]  # the registration is bound to the worker's key
    payload = {
        "task": "finance/rating",
        "language": "en",
        "adapter": "fin-sentiment-en",
        "text": "Revenue grew strongly this quarter.",
    }
    request(client, SERVICE, payload, "rate-1")
    frames = reply(client, 30)
    assert frames is not None
    assert unpack(frames[3])["ok"] is True
    assert unpack(frames[4])["label"] in {"1", "2", "3", "4", "5"}


def test_half_configured_keys_fail_fast(secure, tiny_models):
    secure.allow_keys("worker-a")
    secure.start()
    proc = _model_worker(secure, tiny_models, MOLE_CURVE_SERVER_KEY=str(secure.keys / "broker.key"))
    assert proc.wait(timeout=60) == 2
    log = (secure.tmp / "model-worker.log").read_text()
    assert "MOLE_CURVE_SECRET_KEY" in log
    assert "loading" not in log.lower()  # refused before any model was loaded
