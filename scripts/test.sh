#!/usr/bin/env bash
# Run the tests. Installs first when .venv is missing.
#   scripts/test.sh           ruff, mypy --strict, then the whole suite (unit, process-level,
#                             end-to-end) on three xdist workers (MOLE_TEST_WORKERS=N to change)
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
# Three pytest-xdist workers, a test file each at a time (--dist loadfile keeps a module's
# fixtures, such as a running `mole up`, in one process). Most process-level tests wait on
# child processes, sockets and heartbeats with the CPU idle, so three share two cores well;
# the models every worker needs are built once (tests/support/once.py).
# MOLE_TEST_WORKERS=0 runs the suite in this one process.
# Tests marked `timing` assert a wall-clock bound (an issue's figure, such as a health check
# answered within 1 s under attack): they run afterwards, alone, so the other workers' load
# cannot decide them.
workers="${MOLE_TEST_WORKERS:-3}"
if [ "$workers" = 0 ]; then
    echo "==> the whole suite"
    exec .venv/bin/python -m pytest -q "$@"
fi
# pytest's exit status 5 means "no test selected" (arguments that name no timing test).
pytest_allowing_none() {
    local rc=0
    .venv/bin/python -m pytest "$@" || rc=$?
    if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then
        exit "$rc"
    fi
}
echo "==> the whole suite but the timing tests (${workers} xdist workers)"
pytest_allowing_none -q -n "$workers" --dist loadfile -m "not timing" "$@"
echo "==> the timing tests, alone"
pytest_allowing_none -q -m timing "$@"
