"""End-to-end: ``mole up`` as a real process tree (broker, a worker per base model, gunicorn),
driven over real HTTP exactly as a user would, on tiny offline models."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from mole.configs import config_path
from mole.protocol.client import Client
from mole.protocol.curve import CurveKeys
from mole.protocol.registry import load_registry
from tests.e2e.e2e_stack import Stack, http
from tests.gating.gating_samples import DESCRIPTIONS, SENTENCES
from tests.support.procs import alive, descendants, wait_until

pytestmark = pytest.mark.slow

README_TEXT = "Revenue increased by 20% year over year, exceeding analyst expectations."
README_DESCRIPTION = "Classify the sentiment of this financial statement on a scale of 1-5."

TEXTS = SENTENCES  # one financial sentence per served language
ESCI_TEXTS = {
    "en": "Query: waterproof hiking boots for women Product: Women's waterproof leather "
    "hiking boots with ankle support and a rubber sole",
    "es": "Query: botas de montaña impermeables para mujer Product: Botas de montaña de cuero "
    "impermeables para mujer con suela de goma y soporte para el tobillo",
    "ja": "Query: 女性用の防水ハイキングブーツ Product: 足首をしっかり支える女性用の防水レザー"
    "ハイキングブーツです。ゴム底で滑りにくいです。",
}
REGISTRY = load_registry()
PAIRS = [(task.name, code) for task in REGISTRY.tasks.values() for code in task.experts]


def _text(task: str, code: str) -> str:
    return ESCI_TEXTS[code] if task == "esci" else TEXTS[code]


#: PII answers are generated; the tiny random models never emit EOS, so every PII request
#: would run to the registry's 512 new tokens (seconds each on 2 cores, 36 of them here).
#: What these tests check is the path to the expert, not the length of its output.
PII_MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def registry_file(tmp_path_factory) -> Path:
    """The packaged registry with PII generation cut to PII_MAX_NEW_TOKENS."""
    document = json.loads(config_path("experts_registry.json").read_text(encoding="utf-8"))
    document["tasks"]["finance/pii"]["generation"]["max_new_tokens"] = PII_MAX_NEW_TOKENS
    folder = tmp_path_factory.mktemp("registry")
    shutil.copytree(config_path("templates"), folder / "templates")  # relative to the file
    path = folder / "experts_registry.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def stack(tiny_models, registry_file, tmp_path_factory):
    stack = Stack(
        tmp_path_factory.mktemp("stack"),
        tiny_models,
        env={"REQUEST_TIMEOUT_SECONDS": "20"},
        registry=registry_file,
    )
    try:
        stack.wait_ready()
        yield stack
    finally:
        processes = descendants(stack.process.pid)
        code = stack.stop()
        assert code == 0, "\n".join(stack.output[-20:])
        wait_until(lambda: not any(alive(p) for p in processes), timeout=10.0)
        orphans = [p for p in processes if alive(p)]
        assert not orphans, f"processes left after mole up stopped: {orphans}"


@pytest.fixture(scope="module")
def token(stack):
    user = {"username": "alice", "password": "correct-horse-42"}
    reply = http("POST", f"{stack.url}/api/v1/auth/register", json_body=user)
    assert reply.status == 201, reply.body
    reply = http("POST", f"{stack.url}/api/v1/auth/token", form=user)
    assert reply.status == 200, reply.body
    assert reply.body["token_type"] == "bearer"
    return reply.body["access_token"]


def classify(stack, token, text, description, **options):
    return http(
        "POST",
        f"{stack.url}/api/v1/classify",
        token=token,
        json_body={"text": text, "description": description, "options": options},
    )


def test_readme_sequence(stack, token):
    reply = classify(stack, token, README_TEXT, README_DESCRIPTION)
    assert reply.status == 200, reply.body
    body = reply.body
    assert body["language"] == "english"
    assert body["domain"] == "finance"
    assert body["task"] == "rating"
    assert body["result"] in {"1", "2", "3", "4", "5"}
    assert 0.0 < body["confidence"] <= 1.0
    assert body["routing_path"] == "english -> finance -> rating -> llama-2-7b-hf"
    assert body["model"] == "llama-2-7b-hf"
    assert body["tiny_model"] is True
    assert reply.headers.get("x-request-id") == body["request_id"]


@pytest.mark.parametrize(("task", "code"), PAIRS, ids=[f"{t}-{c}" for t, c in PAIRS])
def test_every_task_and_language_reaches_its_expert(distributed_answers, task, code):
    expert = REGISTRY.resolve(task, code)
    body = distributed_answers[(task, code)]
    assert body["task"] == task
    assert body["language"] == expert.language.name
    assert body["model"] == expert.base_model_key
    assert body["routing_path"].endswith(f"-> {expert.base_model_key}")
    assert body["worker_id"]
    if task == "pii":
        entities = json.loads(body["result"])
        assert isinstance(entities, list)
        assert isinstance(body["entities"], list)
    else:
        assert body["result"] in expert.label_set
        assert set(body["probabilities"]) == set(expert.label_set)
        assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-4


@pytest.fixture(scope="module")
def distributed_answers(stack, token) -> dict[tuple[str, str], dict]:
    """The distributed stack's answer for every (task, language), asked once here: each
    (task, language) test checks its own answer and the monolithic test compares against
    all of them, and neither depends on another test having run first."""
    answers = {}
    for task, code in PAIRS:
        reply = classify(
            stack, token, _text(task, code), DESCRIPTIONS[task], return_probabilities=True
        )
        assert reply.status == 200, (task, code, reply.body)
        answers[(task, code)] = reply.body
    return answers


def test_esci_without_a_query_says_that_gating_chose_esci(stack, token):
    """Gating picks ESCI from the description; the real worker finds no query and product
    in the text and its error says what is missing, in which words, and who chose ESCI."""
    description = (
        "Label this query and product pair as exact, substitute, complement or irrelevant."
    )
    reply = classify(stack, token, "Waterproof hiking boots for women", description)
    assert reply.status == 422, reply.body
    assert reply.body["error"] == "bad_request"
    detail = reply.body["detail"]
    assert "gating" in detail
    assert "esci" in detail
    assert "query" in detail.lower()
    given = http(
        "POST",
        f"{stack.url}/api/v1/classify",
        token=token,
        json_body={
            "text": "Waterproof hiking boots for women",
            "task": "esci",
            "query": "hiking boots",
            "product": "Women's waterproof leather hiking boots",
        },
    )
    assert given.status == 200, given.body
    assert given.body["task"] == "esci"


def test_monolithic_mode_gives_the_same_answers(distributed_answers, tiny_models, tmp_path_factory):
    assert len(distributed_answers) == len(PAIRS)
    mono = Stack(tmp_path_factory.mktemp("mono"), tiny_models, monolithic=True)
    try:
        mono.wait_ready()
        user = {"username": "bob", "password": "correct-horse-43"}
        assert http("POST", f"{mono.url}/api/v1/auth/register", json_body=user).status == 201
        mono_token = http("POST", f"{mono.url}/api/v1/auth/token", form=user).body["access_token"]
        for (task, code), distributed in distributed_answers.items():
            reply = classify(
                mono, mono_token, _text(task, code), DESCRIPTIONS[task], return_probabilities=True
            )
            assert reply.status == 200, (task, code, reply.body)
            assert reply.body["model"] == distributed["model"]
            assert reply.body["result"] == distributed["result"], (task, code)
            if task != "pii":
                assert reply.body["confidence"] == pytest.approx(
                    distributed["confidence"], abs=1e-4
                )
    finally:
        assert mono.stop() == 0


def _worker_pid(stack: Stack, service: str) -> int | None:
    # mole up runs its bus under CURVE: ask with the operator's keys it made
    keys = stack.data_dir / "keys"
    curve = CurveKeys.from_files(keys / "broker.key", keys / "operator.key_secret")
    with Client(stack.broker_url, timeout=5.0, curve=curve) as client:
        status = client.status(timeout=5.0)
    for worker in status["workers"]:
        if worker["service"] == service:
            return (worker.get("metadata") or {}).get("pid")
    return None


def test_worker_killed_and_restarted_under_a_stream_of_requests(stack, token):
    service = "llama-2-7b-hf"
    old_pid = _worker_pid(stack, service)
    assert old_pid, "the llama-2 worker is not registered"
    outcomes: list[tuple[float, int, str | None]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def stream():
        while not stop.is_set():
            sent = time.monotonic()
            try:
                reply = classify(stack, token, README_TEXT, README_DESCRIPTION)
            except BaseException as err:  # a hang or a dropped connection is a failure
                failures.append(err)
                return
            outcomes.append((sent, reply.status, reply.body.get("error")))

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    assert wait_until(lambda: any(status == 200 for _, status, _ in outcomes), timeout=60.0), (
        "no request succeeded before the kill"
    )
    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    new_pid = wait_until(
        lambda: (pid := _worker_pid(stack, service)) and pid != old_pid and pid,
        timeout=240,
        interval=0.5,
    )
    back_at = time.monotonic()
    wait_until(
        lambda: any(status == 200 for sent, status, _ in outcomes if sent > back_at), timeout=60.0
    )
    stop.set()
    for t in threads:
        t.join(timeout=90)
    assert not failures, failures
    assert new_pid, "the supervisor did not bring the worker back"
    assert new_pid != old_pid, "the supervisor did not bring the worker back"
    statuses = {status for _, status, _ in outcomes}
    assert statuses <= {200, 502, 503, 504}, statuses
    for _, status, error in outcomes:
        if status != 200:
            assert error in {"worker_lost", "no_worker", "deadline_exceeded"}, error
    assert any(status == 200 for sent, status, _ in outcomes if sent < killed_at)
    assert any(status == 200 for sent, status, _ in outcomes if sent > back_at), (
        "no request succeeded after the worker came back"
    )
