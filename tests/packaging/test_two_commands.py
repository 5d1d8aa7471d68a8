"""A fresh clone needs two commands: ``make up`` and ``make test``. The README shows them
first, each installs what is missing before it runs, and CI runs the test one."""

from __future__ import annotations

import re

from tests.support.procs import ROOT


def _rules() -> dict[str, tuple[list[str], list[str]]]:
    """Makefile rules: target -> (prerequisites, recipe lines)."""
    rules: dict[str, tuple[list[str], list[str]]] = {}
    current: str | None = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t") and current is not None:
            rules[current][1].append(line.strip())
            continue
        match = re.match(r"^([^\s:=#.][^:=]*):(?!=)\s*(.*)$", line)
        current = None
        if match:
            for target in match.group(1).split():
                rules[target] = (match.group(2).split(), [])
            current = match.group(1).split()[-1]
    return rules


def test_readme_first_code_block_is_make_up_and_make_test() -> None:
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"^```[a-z]*\n(.*?)^```", readme, re.M | re.S)
    assert first is not None
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines()]
    assert [c for c in commands if c] == ["make up", "make test"]


def test_make_up_and_make_test_install_first() -> None:
    rules = _rules()
    install_stamp = next(
        target for target, (_, recipe) in rules.items() if "bash scripts/install.sh" in recipe
    )
    assert "pyproject.toml" in rules[install_stamp][0], "reinstall when the dependencies change"
    for target, runs in [
        ("up", "mole up"),
        ("test", "bash scripts/test.sh"),
        ("test-fast", "bash scripts/test.sh --fast"),
    ]:
        prerequisites, recipe = rules[target]
        assert install_stamp in prerequisites, f"make {target} does not install first"
        assert any(runs in line for line in recipe), (target, recipe)


def test_ci_runs_the_test_command() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "make test" in [re.sub(r"^exec\s+", "", line) for line in lines]


def test_test_script_has_a_fast_lane_of_unit_tests() -> None:
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert '"--fast"' in script
    assert re.search(r'pytest[^\n]*-m "unit', script)
