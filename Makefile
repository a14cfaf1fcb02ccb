# The two commands: `make run` (whole suite locally, with a demo site) and `make test`.
.PHONY: run test lint setup bench

VENV := .venv
PY := $(VENV)/bin/python

setup:
	@scripts/setup.sh

run: setup
	$(PY) -m tools.devstack

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy libs services tools tests bench
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs services tools tests bench

bench: setup
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done
