"""The README's multi-machine recipe and the deploy/ files are secure as written (#16 item
1): every broker they start binds beyond loopback with CURVE and an allow-list, so the
bind policy accepts it without ``--insecure``; every peer they start has the broker's
public key and a secret key of its own; and workers get the time to drain on stop."""

from __future__ import annotations

import argparse
import configparser
import re
import shlex
from pathlib import Path

import pytest
import yaml

from mole.broker import cli as broker_cli
from mole.broker.acl import load_acl
from mole.broker.bind_policy import check_bind
from mole.broker.settings import settings_from_env, with_overrides
from tests.cli.rawpeers import ROOT

DEPLOY = ROOT / "deploy"


def _broker_settings(argv: list[str], env: dict[str, str]):
    parser = argparse.ArgumentParser()
    broker_cli.configure(parser)
    args = parser.parse_args(argv)
    return with_overrides(
        settings_from_env(env),
        bind=args.bind,
        curve_secret=args.curve_secret,
        curve_allow=args.curve_allow,
        curve_acl=args.curve_acl,
        insecure=args.insecure,
    )


def _assert_secure_broker(argv: list[str], env: dict[str, str]) -> Path:
    settings = _broker_settings(argv, env)
    assert not settings.insecure
    assert check_bind(settings) is None  # accepted, and without the insecure warning
    assert settings.curve_secret
    assert settings.curve_allow
    return Path(settings.curve_secret)


def _assert_peer(env: dict[str, str], broker_secret: Path) -> None:
    server = Path(env["MOLE_CURVE_SERVER_KEY"])
    assert server == broker_secret.with_suffix(".key"), "peers need the broker's PUBLIC key"
    assert env["MOLE_CURVE_SECRET_KEY"].endswith(".key_secret")
    assert Path(env["MOLE_CURVE_SECRET_KEY"]) != broker_secret


def _readme_commands() -> list[tuple[dict[str, str], list[str]]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Running on many machines", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            env = {}
            while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            if words and words[0] == "mole":
                commands.append((env, words[1:]))
    return commands


def test_readme_recipe_runs_a_secure_broker_and_keyed_peers():
    commands = _readme_commands()
    brokers = [argv[1:] for env, argv in commands if argv[0] == "broker"]
    assert len(brokers) == 1
    broker_secret = _assert_secure_broker(brokers[0], {})
    peers = [(env, argv) for env, argv in commands if argv[0] in ("frontend", "worker")]
    assert {argv[0] for _, argv in peers} == {"frontend", "worker"}
    for env, _ in peers:
        _assert_peer(env, broker_secret)
    generated = {argv[2] for _, argv in commands if argv[:2] == ["keys", "generate"]}
    assert {"broker", "frontend", "gpu1"} <= generated
    assert "--insecure" not in " ".join(" ".join(argv) for _, argv in commands)


def test_readme_acl_lets_only_the_operator_drain_workers(tmp_path):
    text = (ROOT / "README.md").read_text()
    [acl_text] = re.findall(r"echo '(\{.*\})' > /etc/mole/keys/acl\.json", text)
    path = tmp_path / "acl.json"
    path.write_text(acl_text)
    acl = load_acl(path)
    z85 = "x" * 40  # the ACL names keys by file stem here
    assert acl.may_manage(z85, "operator")
    assert not acl.may_manage(z85, "frontend")
    assert not acl.may_manage(z85, "gpu1")
    assert acl.allows(z85, "gpu1", "llama-2-7b-hf")


def test_compose_coordinator_and_worker_are_keyed():
    coordinator = yaml.safe_load((DEPLOY / "compose.coordinator.yml").read_text())["services"]
    broker = coordinator["broker"]
    broker_secret = _assert_secure_broker(broker["command"][2:], broker["environment"])
    _assert_peer(coordinator["frontend"]["environment"], broker_secret)
    worker = yaml.safe_load((DEPLOY / "compose.worker.yml").read_text())["services"]["worker"]
    env = dict(worker["environment"])
    assert env["MOLE_CURVE_SERVER_KEY"] == str(broker_secret.with_suffix(".key"))
    assert env["MOLE_CURVE_SECRET_KEY"].endswith(".key_secret")
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace > float(env["MOLE_WORKER_DRAIN_TIMEOUT"]), "docker stop would cut the drain"


def _unit(name: str) -> tuple[list[str], dict[str, str], configparser.SectionProxy]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read(DEPLOY / "systemd" / name)
    env = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    return shlex.split(parser["Service"]["ExecStart"]), env, parser["Service"]


def test_systemd_units_are_keyed_and_give_workers_time_to_drain():
    argv, env, _ = _unit("mole-broker.service")
    broker_secret = _assert_secure_broker(argv[2:], env)
    _, frontend_env, _ = _unit("mole-frontend.service")
    _assert_peer(frontend_env, broker_secret)
    _, worker_env, service = _unit("mole-worker@.service")
    _assert_peer(worker_env, broker_secret)
    assert int(service["TimeoutStopSec"]) > float(worker_env["MOLE_WORKER_DRAIN_TIMEOUT"])
    assert service["Restart"] == "on-failure"  # a drained worker (exit 0) stays stopped


@pytest.mark.parametrize("name", ["compose.coordinator.yml", "compose.worker.yml"])
def test_compose_files_do_not_opt_out_of_security(name):
    for service in yaml.safe_load((DEPLOY / name).read_text())["services"].values():
        assert "--insecure" not in service["command"]
        assert "MOLE_BROKER_INSECURE" not in service.get("environment", {})
