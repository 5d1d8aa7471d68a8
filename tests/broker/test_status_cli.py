"""``mole status`` against a live broker (table, --json, --watch) and against nothing."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time

import pytest

from mole.broker import status_cli
from tests.broker.brokerfix import wait_until, wait_workers, workers_of
from tests.broker.rfc_peers import RfcWorker
from tests.support.peers import ROOT, child_env
from tests.support.procs import IGNORING_SIGINT, interrupt, must_wait

pytestmark = pytest.mark.timeout(120)
MOLE = [sys.executable, "-m", "mole"]


def _args(*argv: str):
    parser = __import__("argparse").ArgumentParser()
    status_cli.configure(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def running(bus):
    broker = bus.broker()
    client = bus.client(broker.endpoint)
    bus.worker(broker.endpoint, "llama-2-7b-hf", slots=4, worker_id="w-llama")
    wait_workers(client, "llama-2-7b-hf", 1)
    assert client.call("llama-2-7b-hf", "warm").ok
    return broker


def test_table_shows_services_and_workers(running):
    out, err = io.StringIO(), io.StringIO()
    assert status_cli.run(_args("--broker", running.endpoint), out, err) == 0
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0].startswith("broker ")
    assert running.endpoint in lines[0]
    header = next(line for line in lines if line.startswith("SERVICE"))
    assert header.split() == [
        "SERVICE",
        "WORKERS",
        "SLOTS",
        "IN",
        "FLIGHT",
        "QUEUED",
        "SERVED",
        "ERRORS",
    ]
    row = next(line for line in lines if line.startswith("llama-2-7b-hf"))
    assert row.split() == ["llama-2-7b-hf", "1", "4", "0", "0", "1", "0"]
    worker = next(line for line in lines if line.startswith("w-llama"))
    cells = worker.split()
    assert cells[:7] == ["w-llama", "llama-2-7b-hf", "serving", "127.0.0.1", "4", "0", "1"]
    assert cells[7].endswith("s")
    assert cells[8] == "ago"
    assert "pid=" in worker
    assert err.getvalue() == ""


def test_table_shows_drained_workers():
    row = {"service": "svc", "slots": 1, "served": 0, "last_heartbeat_s": 0.1}
    status = {
        "workers": [
            {**row, "id": "busy", "draining": True, "in_flight": 1},
            {**row, "id": "idle", "draining": True, "in_flight": 0},
            {**row, "id": "hung", "suspect": True, "in_flight": 1},
        ],
        "drained": [
            {"worker": "idle", "service": "svc", "registered": 1},
            {"worker": "gone", "service": "svc", "registered": 0},
        ],
    }
    lines = status_cli.render_table(status).splitlines()
    cells = [line.split() for line in lines]
    states = {c[0]: c[2] for c in cells if c and c[0] in ("busy", "idle", "hung")}
    assert states == {"busy": "draining", "idle": "drained", "hung": "suspect"}
    assert lines[-1] == "drained, not connected (until `mole drain --resume ID`): gone (svc)"


def test_json_is_the_status_document(running):
    result = subprocess.run(
        [*MOLE, "status", "--broker", running.endpoint, "--json"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["services"]["llama-2-7b-hf"]["served"] == 1
    [worker] = status["workers"]
    assert worker["id"] == "w-llama"
    assert worker["slots"] == 4
    assert worker["in_flight"] == 0
    assert {
        "id",
        "service",
        "address",
        "slots",
        "in_flight",
        "served",
        "last_heartbeat_s",
        "metadata",
    } <= set(worker)
    assert status["broker"]["heartbeat_interval_s"] == 0.2


def test_no_broker_gives_a_clear_message_and_exit_1():
    started = time.monotonic()
    result = subprocess.run(
        [*MOLE, "status", "--broker", "tcp://127.0.0.1:9", "--timeout", "0.5"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "no answer from the broker at tcp://127.0.0.1:9 within 0.5s" in result.stderr
    assert "mole broker" in result.stderr
    assert result.stdout == ""
    assert time.monotonic() - started < 20


def test_watch_refreshes_until_interrupted(running):
    """Ctrl-C ends a watch, even one started with SIGINT ignored."""
    watch = [*MOLE, "status", "--broker", running.endpoint, "--watch", "--interval", "0.2"]
    proc = subprocess.Popen(
        [*IGNORING_SIGINT, *watch],
        cwd=ROOT,
        env={**child_env(), "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(proc.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    # refreshed at least once: the table's header twice
    must_wait(lambda: sum("SERVICE" in line for line in lines) >= 2, "a second refresh")
    code = interrupt(proc, "--watch")
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    reader.join(10)


def test_bad_interval_is_refused():
    err = io.StringIO()
    assert status_cli.run(_args("--timeout", "0"), io.StringIO(), err) == 2
    assert "--timeout" in err.getvalue()


def test_table_shows_the_state_a_real_broker_gives_its_workers(bus):
    # attempts time out after 0.3 s and one timeout makes a worker suspect: a worker that
    # heartbeats but never answers (an RFC 18 peer written from the RFC) turns suspect,
    # one that answers stays serving
    broker = bus.broker("--attempt-timeout", "0.3", "--suspect-after", "1")
    hung = RfcWorker(broker.endpoint, "hung-svc", answers=False, heartbeat=0.1).start()
    fine = RfcWorker(broker.endpoint, "fine-svc", heartbeat=0.1).start()
    try:
        client = bus.client(broker.endpoint)
        wait_workers(client, "hung-svc", 1)
        wait_workers(client, "fine-svc", 1)
        client.send("hung-svc", "never answered", ttl_ms=20_000)
        assert wait_until(lambda: hung.requests == 1, 10)
        assert wait_until(lambda: workers_of(client, "hung-svc")[0]["suspect"], 10)
        out, err = io.StringIO(), io.StringIO()
        assert status_cli.run(_args("--broker", broker.endpoint), out, err) == 0
    finally:
        hung.stop()
        fine.stop()
    lines = out.getvalue().splitlines()
    header = next(line for line in lines if line.startswith("WORKER"))
    assert header.split()[:3] == ["WORKER", "SERVICE", "STATE"]
    # a plain RFC 18 worker has no worker_id: its row starts with its routing id in hex
    states = {cells[1]: cells[2] for cells in (line.split() for line in lines) if len(cells) > 2}
    assert states["hung-svc"] == "suspect"
    assert states["fine-svc"] == "serving"
    assert err.getvalue() == ""
