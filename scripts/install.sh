#!/usr/bin/env bash
# Install MoLE and everything its tests need into ./.venv (Python 3.11+, CPU is enough, no
# model hub). Prints one line per step; pip's own log goes to .venv/install.log and is shown
# only when a step fails. Safe to run again: it installs only what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=.venv/install.log

step() { printf '==> %s\n' "$*"; }
quietly() {
    if ! "$@" >>"$LOG" 2>&1; then
        echo "failed: $*" >&2
        echo "--- last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

# pip's "new release available" notice is noise here, and setuptools' informational
# "Editable installation" warning (it always fires for an editable install with a mapped
# package layout such as ours) is not a problem to act on: filter exactly that message.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export PYTHONWARNINGS="ignore:Editable installation:UserWarning${PYTHONWARNINGS:+,$PYTHONWARNINGS}"

if [ ! -x .venv/bin/python ]; then
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "MoLE needs Python 3.11 or newer; $PY is $("$PY" -V 2>&1). Set PYTHON=python3.11." >&2; exit 1; }
    step "creating .venv with $("$PY" -V 2>&1)"
    "$PY" -m venv .venv
fi
: >"$LOG"
step "updating pip and setuptools in .venv"
# setuptools >= 77 reads pyproject's SPDX license; the wheel tests and the type check build
# without isolation, with the venv's own setuptools (a new venv brings 65)
quietly .venv/bin/python -m pip install --upgrade pip 'setuptools>=77'

step "installing MoLE (editable) with its frontend, worker and test dependencies (torch pinned in pyproject.toml; the first time this downloads about 2 GB)"
quietly .venv/bin/python -m pip install -e '.[dev]'
# The dashboard's browser test drives Debian's Chromium (no browser download at test time).
# As root on a Debian-like machine the install adds it; elsewhere that test says it was not
# run and why.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing Debian's chromium and chromium-driver (for the dashboard's browser test)"
        # not fatal: without them that one test is skipped and says why
        if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q chromium chromium-driver; } >>"$LOG" 2>&1; then
            step "could not install chromium (see $LOG): the dashboard's browser test will be skipped"
        fi
    else
        step "skipping chromium (not root or no apt-get): the dashboard's browser test will be skipped"
    fi
fi
step "checking the install"
quietly .venv/bin/mole --help
quietly .venv/bin/python -c 'import mole, mole.broker, mole.frontend, mole.gating, mole.worker'
step "done: .venv/bin/mole is ready (pip's log: $LOG)"
