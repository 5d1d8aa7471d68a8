"""Importing the client library must stay cheap: no torch, transformers or falcon."""

import subprocess
import sys

CODE = """
import sys
import mole.protocol
from mole.protocol import AsyncClient, Client, ClientClosed
import mole.protocol.client, protocol.aio, protocol.mdp, protocol.envelope, protocol.errors
heavy = sorted(m for m in ("torch", "transformers", "falcon", "numpy", "peft")
               if m in sys.modules)
print(",".join(heavy))
"""


def test_client_import_pulls_in_no_heavy_packages():
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""


def test_worker_runtime_and_echo_import_without_torch():
    code = (
        "import sys, mole.worker.runtime, mole.worker.echo; "
        "print(','.join(m for m in ('torch', 'transformers', 'falcon') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""
