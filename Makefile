# The two commands: `make run` (whole suite locally, with a demo site) and `make test`.
.PHONY: run test test-cluster lint setup bench bench-e2e cluster

VENV := .venv
PY := $(VENV)/bin/python

setup:
	@scripts/setup.sh

run: setup
	$(PY) -m tools.devstack

# The multi-host layout, one network namespace per host (root needed); Ctrl-C removes it.
cluster: setup
	$(PY) -m tools.cluster

# The multi-node tests (3-node RabbitMQ, Sentinel failovers, netns hosts) take ~6 min
# more than the 15 the suite may take: `make test-cluster` runs them.
PYTEST_ARGS ?= -m "not cluster"
# Three pytest-xdist workers: the tests mostly wait on servers and processes, so three
# share 2 cores well (about half the serial wall time). Each worker is a test run of
# its own (vhost, Redis prefix, database, Prosody); tests/conftest.py puts the slow
# tests at the head of each worker's part. PYTEST_WORKERS= runs serially.
PYTEST_WORKERS ?= -n 3 --dist worksteal

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy libs services tools tests bench
	$(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-cluster: setup
	$(PY) -m pytest -m cluster

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs services tools tests bench

# Every benchmark, bench_e2e.py (the whole stack, about 2-3 minutes) among them.
bench: setup
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

# Only the end-to-end one, with arguments: make bench-e2e BENCH_ARGS="--visitors 100 --http-seconds 20"
bench-e2e: setup
	$(PY) bench/bench_e2e.py $(BENCH_ARGS)
