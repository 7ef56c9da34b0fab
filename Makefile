# One entry point for every task, the same locally and in CI.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test lint migrate install install-dev node-deps bench bench-startup system-deps soak fuzz lock

# Every install comes from a lock, the same versions on every machine on any
# day: running the service, its runtime lock (requirements.lock, the image's);
# the tests, linters and bench, the dev lock (requirements-dev.lock: the same
# runtime pins, and the tools). Each is checked against its hashes; the service
# itself then goes in editable, resolving nothing. A stamp is redone when its
# lock or pyproject.toml changes; `make lock` writes both locks.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.lock
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The official AsyncAPI parser, which tests/e2e/test_asyncapi.py runs on
# /asyncapi.json: exactly what tests/asyncapi/package-lock.json pins (npm ci).
# Without npm that test skips (fails under REQUIRE_SERVICES), saying so.
NODE_DEPS := tests/asyncapi/node_modules/.installed
$(NODE_DEPS): tests/asyncapi/package.json tests/asyncapi/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: not installing the AsyncAPI parser"; exit 0; }; \
	cd tests/asyncapi && npm ci --no-audit --no-fund --loglevel=error \
	&& touch node_modules/.installed
node-deps: $(NODE_DEPS)

# Debian packages the proxy, browser and JetStream tests drive (CI installs
# them; elsewhere those tests skip, saying what is missing).
SYSTEM_DEPS := nginx chromium nats-server
system-deps:
	@missing=""; for p in $(SYSTEM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		export DEBIAN_FRONTEND=noninteractive; \
		$$sudo apt-get install -y --no-install-recommends $$missing \
		|| { $$sudo apt-get update && $$sudo apt-get install -y --no-install-recommends $$missing; }; \
	fi

migrate: install
	$(BIN)/allocation migrate

run: migrate
	$(BIN)/allocation serve --host $(HOST) --port $(PORT)

# The tests in TEST_WORKERS processes (pytest-xdist); those on the shared
# Redis of TEST_REDIS_URL in one of them, one after another (tests/conftest.py).
TEST_WORKERS ?= 4
test: install-dev node-deps
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The API fuzzed against its own /openapi.json at length (tests/e2e/test_fuzz.py;
# `make test` runs the same tests briefly).
FUZZ_EXAMPLES ?= 500
FUZZ_STEPS    ?= 200
fuzz: install-dev
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_STEPS=$(FUZZ_STEPS) $(BIN)/pytest tests/e2e/test_fuzz.py $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app tests

# The performance bench on a fresh PostgreSQL database (BENCH_DATABASE_URL);
# wrk comes from Debian's package.
bench: install-dev
	command -v wrk >/dev/null || apt-get install -y wrk || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/run.py

# How quickly a worker listens and `allocation outbox` answers: medians of 5 starts.
bench-startup: install-dev
	$(BIN)/python bench/startup.py

# Minutes of mixed load with Redis restarted under it (SOAK_SECONDS, 180 by
# default); PostgreSQL from TEST_DATABASE_URL. Prints its figures.
soak: install-dev
	TEST_DATABASE_URL=$${TEST_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres} \
	$(BIN)/pytest -m soak -s tests/soak $(PYTEST_ARGS)

# Both locks, with their hashes, compiled from pyproject.toml: requirements.lock
# (the image's, its build backend included) and requirements-dev.lock (the same
# runtime pins, with the dev tools). Pins that still satisfy pyproject.toml are
# kept; LOCK_ARGS=--upgrade moves every one to the newest allowed. pip-tools
# runs from a throwaway venv: no dependency of the project. Run it with the
# image's Python (3.11): markers are resolved for this one. The npm lock of the
# AsyncAPI parser: cd tests/asyncapi && npm install --package-lock-only.
LOCK_ARGS ?=
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" "$$tmp/bin/pip-compile" --quiet \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	$(LOCK_ARGS)
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT \
	&& $(PYTHON) -m venv "$$tmp" \
	&& "$$tmp/bin/python" -m pip install --quiet 'pip-tools==7.7.0' \
	&& $(PIP_COMPILE) --build-deps-for wheel --output-file requirements.lock pyproject.toml \
	&& $(PIP_COMPILE) --extra dev --build-deps-for editable --constraint requirements.lock \
		--output-file requirements-dev.lock pyproject.toml
