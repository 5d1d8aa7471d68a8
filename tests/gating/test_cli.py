"""``mole gating`` and ``python -m gating``: train, route, feedback."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mole.gating import cli
from mole.gating.router import QRouter
from mole.gating.settings import DEFAULT_HELDOUT_DATA, DEFAULT_ROUTER_DIR, DEFAULT_TRAIN_DATA
from tests.gating.refusal_support import served_though_unserved

ROOT = Path(__file__).resolve().parents[2]


def _run(argv):
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    return cli.run(parser.parse_args(argv))


def test_mole_gating_route_subprocess():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mole.cli.main",
            "gating",
            "route",
            "--text",
            "Die Aktie ist heute stark gefallen, das ist schlecht.",
            "--description",
            "Rate the sentiment from 1 to 5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "german -> finance -> rating -> llama-2-7b-hf"
    assert "fin-sentiment-de" in out.stdout


def test_python_m_gating_json_and_errors():
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "mole.gating",
            "route",
            "--json",
            "--text",
            "会社の四半期利益は大幅に増加しました。",
            "--description",
            "Is the product an exact match for the shopping query?",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    body = json.loads(ok.stdout)
    assert body["routing_path"] == "japanese -> finance -> esci -> llama-3.1-8b-instruct"
    assert body["expert"]["adapter_name"] == "fin-esci-ja"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "mole.gating",
            "route",
            "--text",
            "O lucro trimestral da empresa subiu fortemente graças à procura.",
            "--description",
            "Rate it",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error [unsupported_language]: the text is in portuguese")


def test_train_reports_heldout_and_saves(tmp_path, capsys):
    heldout = [str(p) for p in DEFAULT_HELDOUT_DATA]
    argv = [
        "train",
        "--data",
        str(DEFAULT_TRAIN_DATA),
        "--out",
        str(tmp_path / "r"),
        "--epochs",
        "30",
    ]
    for h in heldout:
        argv += ["--heldout", h]
    assert _run(argv) == 0
    out = capsys.readouterr().out
    assert "epoch  30/30" in out
    assert "held-out accuracy" in out
    router = QRouter.load(tmp_path / "r")
    assert router.report["validation_accuracy"] >= 0.95
    # the shipped data comes with its unserved descriptions: the router refuses
    assert "refusal threshold" in out
    assert router.threshold is not None
    assert router.report["out_of_scope_examples"] > 100
    assert router.route("Translate this text into French.", "finance").refused
    assert router.report["validation_examples"] == sum(
        1 for p in DEFAULT_HELDOUT_DATA for line in open(p, encoding="utf-8") if line.strip()
    )


def test_train_split_and_min_accuracy(tmp_path, capsys):
    data = tmp_path / "small.jsonl"
    lines = DEFAULT_TRAIN_DATA.read_text(encoding="utf-8").splitlines()[:40]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = _run(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "r"),
            "--epochs",
            "2",
            "--min-accuracy",
            "1.01",
        ]
    )
    assert code == 1
    assert "10% split" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()  # not saved under the bar


def test_train_with_bad_data_is_an_error(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"description": "x", "domain": "finance", "task": "translate"}\n')
    assert _run(["train", "--data", str(data), "--out", str(tmp_path / "r")]) == 2
    assert "error [unknown_task]" in capsys.readouterr().err
    data.write_text('{"description": "x", "domain": "finance"}\n')
    assert _run(["train", "--data", str(data), "--out", str(tmp_path / "r")]) == 2
    assert "bad.jsonl:1: 'task' must be a non-empty string" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_feedback_command(tmp_path, capsys):
    router_dir = tmp_path / "r"
    QRouter.load(DEFAULT_ROUTER_DIR).save(router_dir)
    assert (
        _run(
            [
                "feedback",
                "--router",
                str(router_dir),
                "--description",
                "Summarise the vibes",
                "--task",
                "finance/news",
                "--reward",
                "1",
            ]
        )
        == 0
    )
    assert "Q(news)" in capsys.readouterr().out
    assert QRouter.load(router_dir).feedback_count == 1


def test_train_without_unserved_data_says_it_will_never_refuse(tmp_path, capsys):
    data = tmp_path / "small.jsonl"
    lines = DEFAULT_TRAIN_DATA.read_text(encoding="utf-8").splitlines()[:40]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert _run(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--epochs", "2"]) == 0
    assert "will never refuse" in capsys.readouterr().out
    assert QRouter.load(tmp_path / "r").threshold is None
    # half the refusal data is an error, not a silent router without refusal
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "q")]
    assert _run([*argv, "--calibrate-in", str(DEFAULT_HELDOUT_DATA[0])]) == 2
    assert "error [bad_request]: refusal needs all three" in capsys.readouterr().err


def test_feedback_out_of_scope_command(tmp_path, capsys):
    router_dir = tmp_path / "r"
    QRouter.load(DEFAULT_ROUTER_DIR).save(router_dir)
    description = served_though_unserved(QRouter.load(router_dir))
    argv = ["feedback", "--router", str(router_dir), "--description", description]
    for _ in range(5):
        assert _run([*argv, "--out-of-scope"]) == 0
    out = capsys.readouterr().out
    assert "this description is refused" in out.splitlines()[-1]
    router = QRouter.load(router_dir)
    assert router.feedback_count == 5
    assert router.scope_data.out_of_scope[-1] == description
    assert router.route(description, "finance").refused
    assert _run([*argv, "--out-of-scope", "--reward", "1"]) == 2
    assert "--reward goes with --task" in capsys.readouterr().err
    assert _run([*argv, "--task", "rating"]) == 2
    assert "--task needs --reward" in capsys.readouterr().err


def test_route_command_with_given_task_and_language(capsys):
    argv = ["route", "--text", "Der Gewinn stieg.", "--task", "rating", "--language", "de"]
    assert _run(argv) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "german(given) -> finance(given) -> rating(given) -> llama-2-7b-hf"
    )
    argv = ["route", "--text", "Der Gewinn stieg.", "--description", "Translate to French"]
    assert _run([*argv, "--candidates"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error [task_not_served]: no served task fits this description")
    assert [line.split()[1] for line in err.splitlines()[1:]] == sorted(
        ["finance/rating", "finance/pii", "finance/news", "finance/esci"],
        key=lambda t: (
            -QRouter.load(DEFAULT_ROUTER_DIR)
            .route("Translate to French", "finance")
            .q_values[t.split("/")[1]]
        ),
    )
