"""Secure by default: an exposed broker without CURVE refuses to start (#16 item 1).

Unit checks of which endpoints count as loopback, then real ``mole broker`` processes: the
refusal and its advice, ``--insecure`` (served, with a warning on start), and CURVE with an
allow-list (served, no warning).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zmq.auth

from mole.broker.bind_policy import InsecureBindRefused, check_bind, is_loopback
from mole.broker.settings import BrokerSettings, settings_from_env
from tests.cli.rawpeers import ROOT, dealer, mmi_service, mole, wait_for_broker
from tests.support.procs import free_port, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://127.0.0.1:5555",
        "tcp://127.3.2.1:5555",
        "tcp://localhost:5555",
        "tcp://[::1]:5555",
        "tcp://127.0.0.1:*",
        "ipc:///tmp/mole.sock",
        "inproc://broker",
    ],
)
def test_host_local_endpoints_need_no_keys(endpoint):
    assert is_loopback(endpoint)
    assert check_bind(BrokerSettings(bind=endpoint)) is None


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://*:5555",
        "tcp://0.0.0.0:5555",
        "tcp://[::]:5555",
        "tcp://10.1.2.3:5555",
        "tcp://eth0:5555",
        "tcp://broker.example:5555",
    ],
)
def test_exposed_endpoints_are_refused_without_curve(endpoint):
    assert not is_loopback(endpoint)
    with pytest.raises(InsecureBindRefused) as refused:
        check_bind(BrokerSettings(bind=endpoint))
    message = str(refused.value)
    assert endpoint in message
    assert "mole keys generate" in message
    assert "--insecure" in message


def test_curve_without_allow_list_is_still_refused_when_exposed():
    with pytest.raises(InsecureBindRefused, match="no allow-list"):
        check_bind(BrokerSettings(bind="tcp://*:5555", curve_secret="k.key_secret"))


def test_curve_with_allow_list_or_insecure_is_accepted():
    secure = BrokerSettings(bind="tcp://*:5555", curve_secret="k.key_secret", curve_allow="dir")
    assert check_bind(secure) is None
    warning = check_bind(BrokerSettings(bind="tcp://*:5555", insecure=True))
    assert warning is not None
    assert warning.startswith("INSECURE")


def test_insecure_comes_from_the_environment_too():
    assert settings_from_env({"MOLE_BROKER_INSECURE": "1"}).insecure is True
    assert settings_from_env({"MOLE_BROKER_INSECURE": "no"}).insecure is False
    with pytest.raises(ValueError, match="MOLE_BROKER_INSECURE"):
        settings_from_env({"MOLE_BROKER_INSECURE": "perhaps"})


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("MOLE_BROKER_", "MOLE_CURVE_")):
            del env[name]
    return env


def test_mole_broker_refuses_an_exposed_bind_without_keys():
    port = free_port()
    result = mole("broker", "--bind", f"tcp://0.0.0.0:{port}", env=_env())
    assert result.returncode == 2
    assert "refusing to start" in result.stderr
    assert "mole keys generate" in result.stderr
    assert "--insecure" in result.stderr
    # and nothing listens there any more
    sock = dealer(f"tcp://127.0.0.1:{port}")
    try:
        assert mmi_service(sock, "x", timeout=0.5) is None
    finally:
        sock.close(0)


def _serve(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mole", "broker", *argv],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_insecure_flag_serves_and_warns_on_start(tmp_path):
    port = free_port()
    log = tmp_path / "broker.log"
    process = _serve(["--bind", f"tcp://0.0.0.0:{port}", "--insecure"], log, _env())
    try:
        assert wait_for_broker(f"tcp://127.0.0.1:{port}"), log.read_text()
    finally:
        _stop(process)
    text = log.read_text()
    assert "WARNING" in text
    assert "INSECURE (--insecure)" in text


def test_exposed_bind_with_curve_and_allow_list_serves_only_allowed_keys(tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    allowed.mkdir()
    keys.mkdir()
    zmq.auth.create_certificates(str(keys), "broker")
    client_public, client_secret_file = zmq.auth.create_certificates(str(keys), "client")
    zmq.auth.create_certificates(str(keys), "stranger")
    Path(client_public).rename(allowed / "client.key")
    port = free_port()
    log = tmp_path / "broker.log"
    argv = [
        "--bind",
        f"tcp://0.0.0.0:{port}",
        "--curve-secret",
        str(keys / "broker.key_secret"),
        "--curve-allow",
        str(allowed),
    ]
    process = _serve(argv, log, _env())
    server_public, _ = zmq.auth.load_certificate(str(keys / "broker.key"))
    endpoint = f"tcp://127.0.0.1:{port}"
    try:

        def ask() -> bytes | None:
            pub, sec = zmq.auth.load_certificate(client_secret_file)
            sock = dealer(endpoint, (server_public, pub, sec))
            try:
                return mmi_service(sock, "x", timeout=1.0)
            finally:
                sock.close(0)

        assert wait_until(ask, 30, interval=0) == b"404"
        pub, sec = zmq.auth.load_certificate(str(keys / "stranger.key_secret"))
        stranger = dealer(endpoint, (server_public, pub, sec))
        assert mmi_service(stranger, "x", timeout=1.5) is None
        stranger.close(0)
        plain = dealer(endpoint)
        assert mmi_service(plain, "x", timeout=1.5) is None
        plain.close(0)
    finally:
        _stop(process)
    assert "INSECURE" not in log.read_text()
