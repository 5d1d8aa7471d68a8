# Two commands on a fresh clone: `make up` runs the stack, `make test` runs the tests.
# Each installs what is missing first (scripts/install.sh, again when pyproject.toml changes).
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: up test test-fast typecheck install clean

up: $(INSTALLED)
	$(VENV)/bin/mole up $(ARGS)

test: $(INSTALLED)
	bash scripts/test.sh $(ARGS)

test-fast: $(INSTALLED)
	bash scripts/test.sh --fast $(ARGS)

typecheck: $(INSTALLED)
	bash scripts/typecheck.sh

install: $(INSTALLED)

$(INSTALLED): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $@

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache
