"""``python -m worker`` as a real process on tiny models: it registers only when loaded,
serves real requests over ZeroMQ, and fails fast naming what it cannot load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgpack
import pytest
import zmq

from mole.protocol import mdp
from mole.protocol.envelope import RequestHeader, decode_reply_header, pack, unpack
from mole.protocol.errors import BadRequest
from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY = "llama-2-7b-hf"


def worker_env(tiny: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MOLE_MODELS_DIR=str(tiny / "models"),
        MOLE_ADAPTERS_DIR=str(tiny / "adapters"),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        MOLE_TORCH_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def spawn_worker(tiny: Path, url: str, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mole.worker",
            "--broker",
            url,
            "--heartbeat-interval",
            "0.5",
            *args,
        ],
        cwd=ROOT,
        env=worker_env(tiny, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A worker's /metrics, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.stdout.read() if proc.stdout else ""


def test_worker_registers_after_loading_and_serves_over_zeromq(tiny_models):
    """A raw ROUTER socket plays the broker's part of RFC 18, heartbeats included."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = free_port()
    metrics_port = free_port()
    router.bind(f"tcp://127.0.0.1:{port}")
    proc = spawn_worker(
        tiny_models,
        f"tcp://127.0.0.1:{port}",
        "--model-key",
        KEY,
        "--metrics-port",
        str(metrics_port),
        WORKER_ID="w-test",
    )
    try:
        assert router.poll(120_000), "worker never sent READY"
        ident, *frames = router.recv_multipart()
        ready = mdp.decode_worker(frames)
        assert ready.command == mdp.WorkerCommand.READY
        assert ready.service == KEY
        meta = msgpack.unpackb(ready.metadata, raw=False)
        assert meta["worker_id"] == "w-test"
        assert meta["tiny_model"] is True
        assert meta["tasks"] == ["finance/rating"]
        assert set(meta["languages"]) == {"en", "de", "fr"}
        payloads = {
            "en": {
                "task": "finance/rating",
                "language": "en",
                "text": "Great results!",
                "options": {"return_probabilities": True},
            },
            "de": {
                "task": "finance/rating",
                "adapter": "fin-sentiment-de",
                "text": "Schlechte Zahlen.",
            },
            "bad": {"task": "finance/news", "language": "en", "text": "x"},
        }
        for rid, payload in payloads.items():
            body = [RequestHeader(rid, 30_000).encode(), pack(payload)]
            router.send_multipart(
                [
                    ident,
                    *mdp.encode_worker(
                        mdp.WorkerCommand.REQUEST, client=f"ticket-{rid}".encode(), body=body
                    ),
                ]
            )
        replies = {}
        deadline = time.monotonic() + 60
        while len(replies) < len(payloads) and time.monotonic() < deadline:
            router.send_multipart([ident, mdp.WORKER_HEADER, mdp.W_HEARTBEAT])
            if router.poll(200):
                _, *frames = router.recv_multipart()
                message = mdp.decode_worker(frames)
                if message.command == mdp.WorkerCommand.FINAL:
                    header = decode_reply_header(message.body[0])
                    assert message.client == f"ticket-{header.request_id}".encode()
                    body = unpack(message.body[1]) if len(message.body) > 1 else None
                    replies[header.request_id] = (header, body)
        assert set(replies) == set(payloads)
        header, body = replies["en"]
        assert header.ok
        assert body["result"] in {"1", "2", "3", "4", "5"}
        assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-6
        assert body["worker_id"] == "w-test"
        assert body["tiny_model"] is True
        assert replies["de"][1]["adapter"] == "fin-sentiment-de"
        bad = replies["bad"][0]
        assert not bad.ok
        assert bad.code == "bad_request"
        assert "task" in bad.message
        # --metrics-port: what it computed, scraped from the running worker
        samples = scrape(metrics_port)
        model = ("model", KEY)
        assert samples[("mole_worker_model_load_seconds", (model,))] > 0
        assert samples[("mole_worker_batch_size_sum", (model,))] == 2  # "bad" never ran
        for adapter in ("fin-sentiment-en", "fin-sentiment-de"):
            labels = (("adapter", adapter), model)
            assert samples[("mole_worker_request_seconds_count", labels)] == 1
            assert samples[("mole_worker_tokens_in_total", labels)] > 3
        assert samples[("mole_worker_memory_bytes", (model,))] > 50 * 2**20
    finally:
        log = stop(proc)
        router.close(0)
    assert "loading base model" in log
    assert "adapter" in log
    assert "warm-up done" in log
    assert proc.returncode == 0, log


def test_worker_serves_through_a_real_broker_process(tiny_models):
    from mole.protocol import Client

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen(
        [sys.executable, "-m", "mole.broker", "--bind", url],
        cwd=ROOT,
        env=worker_env(tiny_models),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    worker = spawn_worker(
        tiny_models, url, "--model-key", "llama-3.1-8b-instruct", "--heartbeat-interval", "2.5"
    )
    try:
        with Client(url, timeout=120.0) as client:
            reply = client.request(
                "llama-3.1-8b-instruct",
                {
                    "task": "finance/esci",
                    "language": "ja",
                    "query": "イヤホン",
                    "product": "ワイヤレスイヤホン",
                    "options": {"return_probabilities": True},
                },
                timeout=120.0,
            )
            assert reply["result"] in {"E", "S", "C", "I"}
            assert reply["tiny_model"] is True
            assert reply["adapter"] == "fin-esci-ja"
            with pytest.raises(BadRequest) as err:
                client.request(
                    "llama-3.1-8b-instruct",
                    {"task": "finance/esci", "language": "de", "text": "x"},
                    timeout=30.0,
                )
            assert getattr(err.value, "code", None) == "bad_request"
            workers = client.status()["workers"]
            assert any(w["metadata"].get("tiny_model") for w in workers)
    finally:
        stop(worker)
        stop(broker)


@pytest.mark.parametrize("case", ["model", "adapter", "key"])
def test_worker_fails_fast_naming_what_is_missing(tiny_models, tmp_path, case):
    url = f"tcp://127.0.0.1:{free_port()}"
    env: dict[str, str] = {}
    key = "bloomz-7b1"
    if case == "model":
        env["MOLE_MODELS_DIR"] = str(tmp_path)  # no local copy, and no HF cache entry
    elif case == "adapter":
        env["MOLE_ADAPTERS_DIR"] = str(tmp_path)
    else:
        key = "no-such-model"
    proc = spawn_worker(tiny_models, url, "--model-key", key, **env)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == 2, out
    expected = {
        "model": "bigscience/bloomz-7b1",
        "adapter": "finance/sentiment_analysis/bloomz-7b1",
        "key": "no-such-model",
    }[case]
    assert expected in out


def test_heartbeats_keep_flowing_while_a_long_generation_computes(tiny_models):
    """A PII request generates the registry's 512 tokens (seconds on CPU); the worker's
    heartbeats must keep arriving at its interval meanwhile."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = free_port()
    router.bind(f"tcp://127.0.0.1:{port}")
    proc = spawn_worker(
        tiny_models, f"tcp://127.0.0.1:{port}", "--model-key", "mistral-7B-Instruct-v0.3"
    )
    try:
        assert router.poll(120_000), "worker never sent READY"
        ident, *frames = router.recv_multipart()
        assert mdp.decode_worker(frames).command == mdp.WorkerCommand.READY
        payload = {
            "task": "finance/pii",
            "language": "en",
            "text": "Jane Doe, jane@example.com, IBAN DE89 3704 0044 0532 0130 00.",
        }
        body = [RequestHeader("pii-1", 120_000).encode(), pack(payload)]
        router.send_multipart(
            [ident, *mdp.encode_worker(mdp.WorkerCommand.REQUEST, client=b"t1", body=body)]
        )
        sent = time.monotonic()
        beats: list[float] = []
        final = None
        next_beat = 0.0
        while final is None and time.monotonic() - sent < 120:
            if time.monotonic() >= next_beat:
                router.send_multipart([ident, mdp.WORKER_HEADER, mdp.W_HEARTBEAT])
                next_beat = time.monotonic() + 0.5
            if router.poll(50):
                _, *frames = router.recv_multipart()
                message = mdp.decode_worker(frames)
                if message.command == mdp.WorkerCommand.HEARTBEAT:
                    beats.append(time.monotonic())
                elif message.command == mdp.WorkerCommand.FINAL:
                    final = (decode_reply_header(message.body[0]), unpack(message.body[1]))
        took = time.monotonic() - sent
    finally:
        stop(proc)
        router.close(0)
    assert final is not None
    assert final[0].ok
    assert final[1]["generated_tokens"] > 25
    assert isinstance(final[1]["entities"], list)
    during = [t for t in beats if t <= sent + took]
    assert took > 1.0, (took, len(during))
    assert len(during) >= 2, (took, len(during))
    gaps = [b - a for a, b in zip([sent, *during], during, strict=False)]
    assert max(gaps) < 2.0, gaps  # interval 0.5 s; a blocked socket thread would show a gap
