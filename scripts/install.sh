#!/usr/bin/env bash
# Install MoLE and its test dependencies into ./.venv (Python 3.11+, no GPU, no model hub).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned in pyproject.toml; on CPU machines this takes the CPU build.
.venv/bin/python -m pip install -q -e '.[dev]'
echo "installed: $(.venv/bin/mole --help >/dev/null && echo 'mole command ready in .venv/bin/mole')"
