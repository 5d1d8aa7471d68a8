#!/usr/bin/env bash
# Run the tests. Installs first when .venv is missing.
#   scripts/test.sh           ruff, mypy --strict, then the whole suite (unit, process-level,
#                             end-to-end)
#   scripts/test.sh --fast    ruff, then the unit tests that load no transformers model
#                             (-m "unit and not slow"): in-process, under a minute
# Further arguments go to pytest (e.g. scripts/test.sh --fast -k envelope).
# Which tests are `unit` and which `process`: tests/support/pyramid.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

fast=0
if [ "${1:-}" = "--fast" ]; then
    fast=1
    shift
fi

echo "==> ruff check and ruff format --check"
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .

if [ "$fast" = 1 ]; then
    echo "==> unit tests (the fast lane)"
    exec .venv/bin/python -m pytest -q -m "unit and not slow" "$@"
fi
echo "==> mypy --strict over the mole package (scripts/typecheck.sh)"
bash scripts/typecheck.sh
echo "==> the whole suite"
exec .venv/bin/python -m pytest -q "$@"
