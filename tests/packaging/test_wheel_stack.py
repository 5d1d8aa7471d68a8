"""The built wheel runs the whole stack: ``mole up`` from a fresh venv holding the wheel
(third-party packages borrowed from the test interpreter), started in a folder outside
the repository, answers a classification over HTTP. This is what catches package data left
out of the wheel, or code that finds files through the source tree."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.e2e_stack import Stack, http
from tests.packaging.wheelhouse import clean_env

pytestmark = pytest.mark.slow

TEXT = "Revenue increased by 20% year over year, exceeding analyst expectations."
DESCRIPTION = "Classify the sentiment of this financial statement on a scale of 1-5."
MODEL = "llama-2-7b-hf"  # english / finance / rating is served by this base model


def test_wheel_venv_imports_mole_from_the_wheel(full_python: Path, tmp_path: Path) -> None:
    script = (
        "import json, mole, mole.cli.up, mole.configs, mole.frontend, mole.worker.engine\n"
        "print(json.dumps([mole.__file__, mole.cli.up.__file__, mole.frontend.__file__,\n"
        "                  mole.worker.engine.__file__, str(mole.configs.config_path('x'))]))\n"
    )
    out = subprocess.run(
        [str(full_python), "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    venv = full_python.parent.parent
    for path in json.loads(out.stdout):
        assert Path(path).is_relative_to(venv), f"{path} is not from the wheel's venv"


def test_mole_up_from_the_wheel_classifies(
    full_python: Path, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("elsewhere")  # not the repository: no source on sys.path
    stack = Stack(
        tmp_path_factory.mktemp("wheel-stack"),
        tiny_models,
        models=[MODEL],
        python=str(full_python),
        cwd=outside,
        environ=clean_env(),
    )
    try:
        stack.wait_ready(timeout=240.0)
        ready = http("GET", f"{stack.url}/api/v1/health/ready")
        assert ready.status == 200, ready.body
        token = stack.admin_token()
        reply = http(
            "POST",
            f"{stack.url}/api/v1/classify",
            token=token,
            json_body={"text": TEXT, "description": DESCRIPTION},
        )
        assert reply.status == 200, reply.body
        assert reply.body["routing_path"] == f"english -> finance -> rating -> {MODEL}"
        assert reply.body["result"] in {"1", "2", "3", "4", "5"}
        assert reply.body["tiny_model"] is True
    finally:
        code = stack.stop()
    assert code == 0, "\n".join(stack.output[-20:])
