"""Broker settings: defaults, MOLE_* environment, flags over environment, refusals; and the
rate-limited log that keeps a flood of bad messages from flooding the log."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from mole.broker.ratelog import RateLimitedLog
from mole.broker.settings import BrokerSettings, SettingsError, settings_from_env, with_overrides
from tests.support.peers import ROOT, RawClient, child_env

pytestmark = pytest.mark.timeout(60)


def test_defaults_match_the_design():
    s = BrokerSettings()
    assert s.bind == "tcp://127.0.0.1:5555"
    assert (s.heartbeat_interval, s.liveness) == (2.5, 3)
    assert s.expiry == 7.5


def test_environment_then_flags():
    env = {
        "MOLE_HEARTBEAT_INTERVAL": "0.5",
        "MOLE_HEARTBEAT_LIVENESS": "4",
        "MOLE_BROKER_QUEUE_LIMIT": "7",
        "MOLE_BROKER_DEFAULT_DEADLINE": "12.5",
        "MOLE_BROKER_BIND": "tcp://127.0.0.1:6000",
        "MOLE_BROKER_MAX_MESSAGE_BYTES": "1024",
    }
    s = settings_from_env(env)
    assert (s.heartbeat_interval, s.liveness, s.queue_limit) == (0.5, 4, 7)
    assert (s.default_deadline, s.bind, s.max_message_bytes) == (12.5, "tcp://127.0.0.1:6000", 1024)
    flagged = with_overrides(s, queue_limit=3, liveness=None)
    assert flagged.queue_limit == 3
    assert flagged.liveness == 4


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"MOLE_BROKER_QUEUE_LIMIT": "many"}, "MOLE_BROKER_QUEUE_LIMIT"),
        ({"MOLE_HEARTBEAT_INTERVAL": "fast"}, "MOLE_HEARTBEAT_INTERVAL"),
    ],
)
def test_bad_environment_value_names_the_variable(env, field):
    with pytest.raises(SettingsError, match=field):
        settings_from_env(env)


@pytest.mark.parametrize(
    "override",
    [
        {"heartbeat_interval": 0},
        {"liveness": 0},
        {"queue_limit": 0},
        {"default_deadline": -1},
        {"max_message_bytes": 0},
        {"bind": ""},
        {"drain_timeout": -1},
        {"attempt_timeout": -0.5},
        {"suspect_after": 0},
        {"service_attempt_timeouts": "svc=soon"},
    ],
)
def test_invalid_values_are_refused(override):
    with pytest.raises(SettingsError):
        with_overrides(BrokerSettings(), **override).validated()


def test_drain_and_attempt_settings_from_the_environment():
    env = {
        "MOLE_BROKER_DRAIN_TIMEOUT": "3",
        "MOLE_BROKER_ATTEMPT_TIMEOUT": "4.5",
        "MOLE_BROKER_SERVICE_ATTEMPT_TIMEOUTS": "gpu/*=20",
        "MOLE_BROKER_SUSPECT_AFTER": "5",
    }
    s = settings_from_env(env).validated()
    assert (s.drain_timeout, s.attempt_timeout, s.suspect_after) == (3.0, 4.5, 5)
    assert s.service_attempt_timeouts == "gpu/*=20"


def _mole_broker(*argv: str, env: dict | None = None, timeout: float = 30):
    return subprocess.run(
        [sys.executable, "-m", "mole", "broker", *argv],
        cwd=ROOT,
        env=child_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_mole_broker_refuses_bad_settings_with_exit_2():
    result = _mole_broker("--bind", "tcp://127.0.0.1:*", "--heartbeat-interval", "0")
    assert result.returncode == 2
    assert "heartbeat_interval must be > 0" in result.stderr
    result = _mole_broker("--bind", "tcp://127.0.0.1:*", env={"MOLE_BROKER_QUEUE_LIMIT": "x"})
    assert result.returncode == 2
    assert "MOLE_BROKER_QUEUE_LIMIT" in result.stderr


def test_mole_broker_cannot_bind_exits_1():
    result = _mole_broker("--bind", "tcp://256.0.0.1:1")
    assert result.returncode == 1
    assert "cannot bind" in result.stderr


def test_flags_override_environment_in_the_running_broker(bus):
    broker = bus.broker(
        "--queue-limit",
        "5",
        env={"MOLE_BROKER_QUEUE_LIMIT": "9", "MOLE_BROKER_DEFAULT_DEADLINE": "4"},
    )
    with RawClient(broker.endpoint) as client:
        info = client.status()["broker"]
    assert info["queue_limit"] == 5  # flag wins
    assert info["default_deadline_s"] == 4.0  # environment over the default
    assert info["heartbeat_interval_s"] == 0.2


def test_python_dash_m_broker_help():
    result = subprocess.run(
        [sys.executable, "-m", "mole.broker", "--help"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    assert "--heartbeat-interval" in result.stdout


def test_rate_limited_log_lets_a_burst_through_then_summarises(caplog):
    now = [0.0]
    log = RateLimitedLog(
        logging.getLogger("test.ratelog"), burst=3, period=10.0, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        for i in range(50):
            log.log(logging.WARNING, "bad message %d", i)
        assert [r.getMessage() for r in caplog.records] == [
            "bad message 0",
            "bad message 1",
            "bad message 2",
        ]
        now[0] = 11.0
        log.log(logging.WARNING, "bad message %d", 50)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[3] == "47 similar messages suppressed in the last 11 s"
    assert messages[4] == "bad message 50"
