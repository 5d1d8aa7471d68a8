#!/usr/bin/env bash
# Type-check the `mole` package with mypy --strict (settings: [tool.mypy] in pyproject.toml).
#
# mypy cannot follow the editable install's import hook (which maps mole.broker to broker/
# and so on), so the package is installed as plain files into a scratch folder and checked
# there; error paths are mapped back to the repository's folders in the output.
# Arguments go to mypy (e.g. scripts/typecheck.sh --no-error-summary).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ -x .venv/bin/python ] || bash scripts/install.sh
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

echo "==> installing mole as plain files into a scratch folder" >&2
PYTHONWARNINGS="ignore:Editable installation:UserWarning" .venv/bin/python -m pip install \
    -q --no-deps --no-build-isolation --disable-pip-version-check --target "$SCRATCH/site" . \
    >"$SCRATCH/pip.log" 2>&1 || { cat "$SCRATCH/pip.log" >&2; exit 1; }
rm -rf build  # pip builds in the tree; keep the checkout clean

echo "==> mypy --strict -p mole" >&2
cd "$SCRATCH/site"
set +e
MYPYPATH="$SCRATCH/site" "$ROOT/.venv/bin/python" -m mypy --config-file "$ROOT/pyproject.toml" \
    --python-executable "$ROOT/.venv/bin/python" --cache-dir "$ROOT/.mypy_cache" \
    -p mole "$@" >"$SCRATCH/mypy.out" 2>&1
status=$?
set -e
# mole/<part>/... -> the folder pyproject.toml maps it from (see [tool.setuptools.package-dir])
sed -E 's#^mole/(protocol|broker|worker|gating|frontend|configs)/#\1/#' "$SCRATCH/mypy.out"
exit $status
