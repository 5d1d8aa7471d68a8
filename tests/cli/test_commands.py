"""The everyday commands without a running model stack (#19 item 3): ``--version``, help
with defaults on every flag, the stack record, the keys ``mole up`` makes, ports in use, a
second stack refused, ``mole down``, ``mole logs``, and the supervisor's restarts and
staged stop, all with real files, sockets and processes."""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import zmq.auth

from mole.cli import classify as classify_cli
from mole.cli import down, drain, keys, logs, up
from mole.cli.stack_keys import ensure_stack_keys
from mole.cli.stack_state import (
    StackState,
    apply_stack_defaults,
    read_state,
    remove_state,
    write_state,
)
from mole.cli.supervisor import Supervisor
from tests.cli.rawpeers import mole
from tests.support.procs import IGNORING_SIGINT, free_port, interrupt, must_wait

pytestmark = pytest.mark.timeout(120)


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOLE_", "EXPERT_"))}
    env["MOLE_DATA_DIR"] = str(data_dir)
    return env


# ---- --version and help ---------------------------------------------------------------


def test_version_is_the_installed_distributions():
    for flag in ("--version", "-V"):
        result = mole(flag)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"mole {version('mole-framework')}"


def _parser(module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    module.configure(parser)
    return parser


def _flags(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _flags(sub)
        elif action.option_strings and "--help" not in action.option_strings:
            yield action


def _owned_parsers():
    from mole.broker import cli as broker_cli
    from mole.worker import cli as worker_cli

    modules = {
        "up": up,
        "down": down,
        "logs": logs,
        "drain": drain,
        "classify": classify_cli,
        "keys": keys,
        "broker": broker_cli,
        "worker": worker_cli,
    }
    return [(name, _parser(module)) for name, module in modules.items()]


@pytest.mark.parametrize(("name", "parser"), _owned_parsers(), ids=lambda v: str(v)[:12])
def test_every_flag_has_help_that_states_its_default(name, parser):
    for action in _flags(parser):
        flag = action.option_strings[-1]
        assert action.help, f"mole {name} {flag}: no help"
        assert len(action.help) > 10, f"mole {name} {flag}: no help"
        if action.default not in (None, False):
            assert "default" in action.help, f"mole {name} {flag}: default not stated"


def test_every_subcommand_answers_help():
    for name in ("up", "down", "logs", "drain", "classify", "keys", "status"):
        result = mole(name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        assert f"mole {name}" in result.stdout


# ---- keys and the stack record ---------------------------------------------------------


def test_stack_keys_are_private_reused_and_only_workers_may_serve(tmp_path):
    keys, made = ensure_stack_keys(tmp_path)
    assert made == ["broker", "worker", "frontend", "operator"]
    assert stat.S_IMODE(keys.directory.stat().st_mode) == 0o700
    for path in keys.directory.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert sorted(p.name for p in keys.allow_dir.iterdir()) == [
        "frontend.key",
        "operator.key",
        "worker.key",
    ]
    assert json.loads(keys.acl.read_text()) == {"worker": ["*"], "operator": ["@manage"]}
    public, secret = zmq.auth.load_certificate(str(keys.secret("worker")))
    assert secret is not None
    allowed, _ = zmq.auth.load_certificate(str(keys.allow_dir / "worker.key"))
    assert allowed == public
    before = keys.broker_secret.read_bytes()
    again, made_again = ensure_stack_keys(tmp_path)
    assert made_again == []
    assert again.broker_secret.read_bytes() == before
    assert keys.peer_env("frontend")["MOLE_CURVE_SECRET_KEY"].endswith("frontend.key_secret")


def _state(tmp_path: Path, pid: int) -> StackState:
    return StackState(
        pid=pid,
        url="http://127.0.0.1:18000",
        http_port=18000,
        host="127.0.0.1",
        data_dir=str(tmp_path),
        log_dir=str(tmp_path / "logs"),
        started_at=time.time(),
        broker_url="tcp://127.0.0.1:15555",
        broker_port=15555,
        keys_dir=str(tmp_path / "keys"),
    )


def test_stack_record_round_trip_and_a_dead_pid_counts_as_no_stack(tmp_path):
    write_state(_state(tmp_path, os.getpid()))
    assert stat.S_IMODE((tmp_path / "stack.json").stat().st_mode) == 0o600
    state = read_state(tmp_path)
    assert state is not None
    assert state.url == "http://127.0.0.1:18000"
    env: dict[str, str] = {"MOLE_DATA_DIR": str(tmp_path)}
    assert apply_stack_defaults(env) is not None
    assert env["MOLE_BROKER_URL"] == "tcp://127.0.0.1:15555"
    assert env["MOLE_CURVE_SECRET_KEY"] == str(tmp_path / "keys" / "operator.key_secret")
    named = {"MOLE_DATA_DIR": str(tmp_path), "MOLE_BROKER_URL": "tcp://elsewhere:1"}
    assert apply_stack_defaults(named) is None  # an explicit broker wins
    assert named["MOLE_BROKER_URL"] == "tcp://elsewhere:1"
    remove_state(tmp_path, os.getpid())
    assert read_state(tmp_path) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_state(_state(tmp_path, dead.pid))
    assert read_state(tmp_path) is None


def test_classify_takes_the_running_stacks_url(tmp_path):
    write_state(_state(tmp_path, os.getpid()))
    args = argparse.Namespace(url=None, data_dir=tmp_path)
    assert classify_cli.resolve_url(args) == "http://127.0.0.1:18000"
    args = argparse.Namespace(url="http://other:1/", data_dir=tmp_path)
    assert classify_cli.resolve_url(args) == "http://other:1"


# ---- mole up refuses -------------------------------------------------------------------


def test_ports_in_use_are_named():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = free_port()
        assert up.ports_in_use("127.0.0.1", {"broker": port, "HTTP": free}) == [f"{port} (broker)"]


def test_mole_up_refuses_ports_in_use_saying_which(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = mole(
            "up",
            "--broker-port",
            str(port),
            "--http-port",
            str(free_port()),
            env=_env(tmp_path),
        )
    assert result.returncode == 1
    assert f"port {port} (broker, --broker-port)" in result.stderr
    assert "already in use" in result.stderr
    assert not (tmp_path / "tiny").exists()  # refused before any work


def test_mole_up_refuses_a_second_stack_of_the_same_data_dir(tmp_path):
    write_state(_state(tmp_path, os.getpid()))  # this test process plays the running stack
    result = mole(
        "up",
        "--broker-port",
        str(free_port()),
        "--http-port",
        str(free_port()),
        env=_env(tmp_path),
    )
    assert result.returncode == 1
    assert f"already running (mole up pid {os.getpid()}" in result.stderr
    assert "mole down" in result.stderr


# ---- mole down -------------------------------------------------------------------------


def test_mole_down_without_a_stack_says_so(tmp_path):
    result = mole("down", env=_env(tmp_path))
    assert result.returncode == 0
    assert "nothing to stop" in result.stdout


def test_mole_down_stops_the_recorded_process_and_waits_for_it(tmp_path):
    marker = tmp_path / "terminated"
    fake_up = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time, pathlib\n"
            "def bye(*_):\n"
            f"    time.sleep(0.5); pathlib.Path({str(marker)!r}).write_text('x'); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake_up.stdout is not None
        assert fake_up.stdout.readline() == "ready\n"  # its SIGTERM handler is installed
        write_state(_state(tmp_path, fake_up.pid))
        result = mole("down", env=_env(tmp_path))
        assert result.returncode == 0, result.stderr
        assert "stopped" in result.stdout
        assert marker.exists()  # down returned only after the process finished stopping
    finally:
        if fake_up.poll() is None:
            fake_up.kill()
        fake_up.wait()


# ---- mole logs -------------------------------------------------------------------------


def _write_logs(directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "broker.log").write_text("".join(f"broker line {i}\n" for i in range(100)))
    (directory / "frontend.log").write_text("frontend line\n")
    (directory / "worker-llama-2-7b-hf.log").write_text("llama line\n")
    (directory / "worker-qwen2.5.log").write_text("qwen line\n")


def test_mole_logs_shows_one_part_by_name_or_prefix(tmp_path):
    _write_logs(tmp_path / "logs")
    result = mole("logs", "broker", "-n", "3", env=_env(tmp_path))
    assert result.returncode == 0
    assert result.stdout.splitlines() == [f"broker line {i}" for i in (97, 98, 99)]
    result = mole("logs", "worker-ll", env=_env(tmp_path))
    assert result.stdout.strip() == "llama line"


def test_mole_logs_without_part_shows_every_log_labelled(tmp_path):
    _write_logs(tmp_path / "logs")
    result = mole("logs", "-n", "1", env=_env(tmp_path))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "broker | broker line 99" in lines
    assert "frontend | frontend line" in lines
    assert "worker-qwen2.5 | qwen line" in lines


def test_mole_logs_explains_unknown_and_ambiguous_parts(tmp_path):
    result = mole("logs", env=_env(tmp_path))
    assert result.returncode == 2
    assert "no logs in" in result.stderr
    _write_logs(tmp_path / "logs")
    result = mole("logs", "gpu", env=_env(tmp_path))
    assert result.returncode == 2
    assert "no log named 'gpu'; there are: broker, frontend" in result.stderr
    result = mole("logs", "worker", env=_env(tmp_path))
    assert result.returncode == 2
    assert "matches several logs" in result.stderr


# ---- supervisor ------------------------------------------------------------------------


def _exits(code: int) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.exit({code})"]


def test_supervisor_restarts_with_growing_back_off_and_respects_policies(tmp_path):
    supervisor = Supervisor(tmp_path, backoff_initial=0.5, backoff_max=2.0, stable_after=100)
    crashing = supervisor.start("broker", _exits(3), restart="always")
    drained = supervisor.start("worker", _exits(0), restart="on-failure")
    crashing.process.wait()
    drained.process.wait()
    now = time.monotonic()
    events = supervisor.check(now)
    assert {(e.child.name, e.kind, e.code, e.restart_in) for e in events} == {
        ("broker", "exited", 3, 0.5),
        ("worker", "exited", 0, None),  # a drained worker is not restarted
    }
    assert supervisor.check(now + 0.1) == []  # not due yet, and nothing sleeps
    events = supervisor.check(now + 0.6)
    assert [(e.child.name, e.kind) for e in events] == [("broker", "restarted")]
    crashing.process.wait()
    delays = []
    for _ in range(3):
        (event,) = supervisor.check(time.monotonic())
        delays.append(event.restart_in)
        supervisor.check(time.monotonic() + 10)  # restart it at once
        crashing.process.wait()
    assert delays == [1.0, 2.0, 2.0]  # doubled, capped at backoff_max
    assert crashing.restarts == 4
    supervisor.stop_all()


def test_supervisor_stops_tiers_in_order(tmp_path):
    order = tmp_path / "order"

    def recorder(name: str, linger: float) -> list[str]:
        code = (
            "import signal, sys, time\n"
            "def bye(*_):\n"
            f"    time.sleep({linger})\n"
            f"    open({str(order)!r}, 'a').write({name!r} + '\\n')\n"
            "    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n"
        )
        return [sys.executable, "-c", code]

    supervisor = Supervisor(tmp_path / "logs")
    supervisor.start("broker", recorder("broker", 0.0), tier=0)
    supervisor.start("worker", recorder("worker", 0.3), tier=1)
    supervisor.start("frontend", recorder("frontend", 0.6), tier=2)
    for name in ("broker", "worker", "frontend"):
        log = tmp_path / "logs" / f"{name}.log"
        must_wait(lambda log=log: "ready" in log.read_text(), f"{name} to start", timeout=30)
    supervisor.stop_all()
    # the frontend lingers longest, yet is stopped and done before workers, then broker
    assert order.read_text().split() == ["frontend", "worker", "broker"]
    assert all(not c.alive() for c in supervisor.children)


def test_mole_drain_explains_an_unknown_worker(tmp_path):
    env = _env(tmp_path)
    env["MOLE_BROKER_URL"] = f"tcp://127.0.0.1:{free_port()}"  # nobody answers there
    result = mole("drain", "w-1", "--timeout", "1", env=env)
    assert result.returncode == 1
    assert "does not answer" in result.stderr


def test_supervisor_never_restarts_a_configuration_error(tmp_path):
    supervisor = Supervisor(tmp_path)
    child = supervisor.start("frontend", _exits(2), restart="always")
    child.process.wait()
    (event,) = supervisor.check()
    assert (event.kind, event.code, event.restart_in) == ("exited", 2, None)
    assert supervisor.check(time.monotonic() + 100) == []
    supervisor.stop_all()


def test_mole_up_fails_fast_naming_a_worker_that_cannot_load(tmp_path):
    empty = tmp_path / "no-models"
    empty.mkdir()
    result = mole(
        "up", "--models", "llama-2-7b-hf", "--models-dir", str(empty),
        "--broker-port", str(free_port()), "--http-port", str(free_port()),
        "--frontend-workers", "1",
        env=_env(tmp_path / "data"), timeout=240,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    assert "worker-llama-2-7b-hf exited with 2; not restarted" in result.stdout
    assert "worker-llama-2-7b-hf | " in result.stdout  # its log's last lines, shown
    assert "cannot start worker for llama-2-7b-hf" in result.stdout
    assert "all processes stopped" in result.stdout
    assert not (tmp_path / "data" / "stack.json").exists()


def test_mole_up_gives_each_bus_process_more_grace_than_its_drain_timeout(tmp_path):
    keys, _ = ensure_stack_keys(tmp_path)
    specs = up.bus_children(["python", "-m", "mole"], "tcp://127.0.0.1:5555", ["m1"], {}, keys)
    assert [s.name for s in specs] == ["broker", "worker-m1"]
    for spec in specs:
        drain_timeout = float(spec.argv[spec.argv.index("--drain-timeout") + 1])
        assert spec.grace > drain_timeout, spec.name  # SIGKILL never cuts a drain short


def test_mole_logs_follow_prints_appended_lines_until_ctrl_c(tmp_path):
    """--follow shows lines written after it started, and Ctrl-C ends it even when it was
    started with SIGINT ignored (a background job)."""
    _write_logs(tmp_path / "logs")
    proc = subprocess.Popen(
        [*IGNORING_SIGINT, sys.executable, "-m", "mole", "logs", "frontend", "--follow"],
        env={**_env(tmp_path), "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    must_wait(lambda: "frontend line\n" in lines, "the existing line")
    with open(tmp_path / "logs" / "frontend.log", "a") as log:
        log.write("appended later\n")
    must_wait(lambda: "appended later\n" in lines, "the appended line")
    assert interrupt(proc, "mole logs --follow") == 0
    reader.join(10)
