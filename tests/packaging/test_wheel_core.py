"""The built wheel alone: one import name, the package data inside it, and a core install
(pyzmq, msgpack and msgspec, no torch) that is a working client library and broker."""

from __future__ import annotations

import json
import subprocess
import zipfile
from email.parser import Parser
from pathlib import Path

import zmq

from tests.packaging.conftest import CORE_DEPENDENCIES
from tests.packaging.wheelhouse import clean_env, wheel_names
from tests.support.procs import free_port, stop

# MDP/0.2 client commands (RFC 18): a client's REQUEST and the broker's FINAL reply
MDP_CLIENT = b"MDPC02"
REQUEST, FINAL = b"\x01", b"\x03"


def test_wheel_installs_only_the_mole_package_and_carries_its_data(wheel: Path) -> None:
    names = wheel_names(wheel)
    tops = {name.split("/")[0] for name in names}
    (dist_info,) = [top for top in tops if top.endswith(".dist-info")]
    assert tops == {"mole", dist_info}
    for data in (
        "mole/py.typed",
        "mole/configs/experts_registry.json",
        "mole/configs/gating/task_router/meta.json",
    ):
        assert data in names, f"{data} is missing from the wheel"
    assert any(n.startswith("mole/configs/templates/") and n.endswith(".json") for n in names)
    assert any(n.startswith("mole/configs/router_data/") and n.endswith(".jsonl") for n in names)
    assert any(
        n.startswith("mole/configs/gating/task_router/") and n.endswith(".npz") for n in names
    )


def test_wheel_core_requirements_are_pyzmq_msgpack_and_msgspec_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    requirements = metadata.get_all("Requires-Dist") or []
    core = [r for r in requirements if "extra ==" not in r]
    core_names = sorted(r.split(">")[0].split("<")[0].split("=")[0].strip() for r in core)
    assert core_names == sorted(CORE_DEPENDENCIES)
    worker = [r for r in requirements if 'extra == "worker"' in r]
    assert any(r.startswith("torch") for r in worker)
    assert not any(r.startswith("torch") for r in core)


def test_core_install_imports_the_client_without_torch(core_python: Path, tmp_path: Path) -> None:
    script = (
        "import json, sys\n"
        "from mole import AsyncClient, Client\n"
        "import mole, mole.broker\n"
        "print(json.dumps({'mole': mole.__file__, 'broker': mole.broker.__file__,\n"
        "    'heavy': sorted(m for m in ('torch', 'transformers', 'falcon', 'numpy')\n"
        "                    if m in sys.modules)}))\n"
    )
    out = subprocess.run(
        [str(core_python), "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    venv = core_python.parent.parent
    assert Path(found["mole"]).is_relative_to(venv), found
    assert Path(found["broker"]).is_relative_to(venv), found
    assert found["heavy"] == []
    torch = subprocess.run(
        [str(core_python), "-c", "import torch"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
    )
    assert torch.returncode != 0
    assert "No module named 'torch'" in torch.stderr


def _mmi_service(endpoint: str, name: bytes, timeout_ms: int = 30_000) -> list[bytes]:
    """Ask the broker whether ``name`` has a worker, as RFC 18's client would: a DEALER
    sends [MDPC02, REQUEST, "mmi.service", name] (MDP/0.2 has no empty delimiter frame) and
    reads the FINAL."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart([MDP_CLIENT, REQUEST, b"mmi.service", name])
        assert sock.poll(timeout_ms), "the broker did not answer mmi.service"
        frames: list[bytes] = sock.recv_multipart()
        return frames
    finally:
        sock.close()


def test_core_install_runs_mole_broker_and_answers_mmi_service(
    core_python: Path, tmp_path: Path
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    log = tmp_path / "broker.log"
    with open(log, "wb") as out:
        broker = subprocess.Popen(
            [str(core_python.parent / "mole"), "broker", "--bind", endpoint],
            cwd=tmp_path,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        frames = _mmi_service(endpoint, b"no-such-model")
    finally:
        code = stop(broker)
    assert frames == [MDP_CLIENT, FINAL, b"mmi.service", b"404"], log.read_text()
    assert code == 0, log.read_text()
