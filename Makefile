PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Versions every environment installs (make install, CI, the deployment guide): the ranges in
# pyproject.toml say what works, this file says what was tested. `make lock` refreshes it.
CONSTRAINTS := constraints.txt

.PHONY: install lock dist demo fuzz test test-all test-slow test-faults test-pg test-stress test-10x check clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,simulators]'
	touch $(STAMP)

# Re-resolve from pyproject.toml's ranges in a clean environment and pin what came out.
lock:
	rm -rf .lock-venv
	$(PY) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet '.[dev]'
	( echo "# pinned by 'make lock' from pyproject.toml's ranges; make install uses it (-c)"; \
	  .lock-venv/bin/python -m pip freeze --all --exclude onewindow-gateway \
	    | grep -v -E '^pip==' ) > $(CONSTRAINTS)
	rm -rf .lock-venv

# The wheel and sdist ops install (docs/deploy.md); built from this environment, no download.
dist: install
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .

demo: install
	$(BIN)/gateway demo

# Tests run in parallel (pytest-xdist). Four workers on two cores: most of a test's time is
# spent waiting (servers on loopback, databases, subprocesses); with two workers the cores were
# busy about a third of a quiet run (4 min wall, 2.4 min CPU). worksteal: an idle worker takes
# tests from a busy one (one file per worker left a single slow file running alone at the end). GATEWAY_TEST_PG_URL=auto: the
# PostgreSQL variants run when the local server (127.0.0.1:5432, database test) answers.
PG_LOCAL := postgresql+asyncpg://postgres@127.0.0.1:5432/test
WORKERS ?= 4
# Bytecode caches on: with PYTHONDONTWRITEBYTECODE set, every worker and every `python -m
# gateway` a test starts compiled the gateway again, and pytest re-rewrote ~400 modules (about
# 3 s of CPU per process). __pycache__ folders are ignored by git.
PY_ENV := env -u PYTHONDONTWRITEBYTECODE
PYTEST := $(PY_ENV) $(BIN)/python -m pytest -q -n $(WORKERS) --dist worksteal

# The API fuzzed by schemathesis: >= 300 examples per operation, with a centre key and an ops
# key, against a real `gateway serve` (the normal test run does a few per operation).
fuzz: install
	FUZZ_EXAMPLES=300 $(BIN)/python -m pytest -q -rP -p no:randomly tests/test_schemathesis.py

# everything but the tests marked slow (real processes, SIGKILL, installs) or faults
test: install
	GATEWAY_TEST_PG_URL=$${GATEWAY_TEST_PG_URL:-auto} $(PYTEST) -m "not slow and not faults"

# everything, the slow tests too
test-all: install
	GATEWAY_TEST_PG_URL=$${GATEWAY_TEST_PG_URL:-auto} $(PYTEST)

# only the tests marked slow (CI runs these after test-stress: every test runs once)
test-slow: install
	GATEWAY_TEST_PG_URL=$${GATEWAY_TEST_PG_URL:-auto} $(PYTEST) -m slow

# the fault suite (tests/faults/): a PostgreSQL cluster of its own stopped, its connections
# killed, a table locked; data_dir full; a department or SFTP server that drops or hangs.
# Each test prints a FAULT line with its figures.
test-faults: install
	$(PY_ENV) $(BIN)/python -m pytest -q -s -p no:randomly -m faults

# only the PostgreSQL variants; fails (exit 5) when none passed
test-pg: install
	GATEWAY_TEST_PG_URL=$${GATEWAY_TEST_PG_URL:-$(PG_LOCAL)} GATEWAY_TEST_PG_REQUIRED=1 \
		$(PYTEST) -m postgres

# `make test` while CPU burners keep every core busy: the suite must not depend on speed
test-stress: install
	$(BIN)/python scripts/under_load.py $(MAKE) --no-print-directory test

# `make test` ten times in a row: the pass count and the slowest run
test-10x: install
	scripts/test-10x 10

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .gateway-demo dist build
