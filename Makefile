# One entry point for every task, the same locally and in CI.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test lint migrate install bench system-deps soak fuzz

$(BIN)/activate: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(BIN)/activate

install: $(BIN)/activate

# Debian packages the proxy and browser tests drive (CI installs them; elsewhere
# those tests skip, saying what is missing).
SYSTEM_DEPS := nginx chromium
system-deps:
	@missing=""; for p in $(SYSTEM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		export DEBIAN_FRONTEND=noninteractive; \
		$$sudo apt-get install -y --no-install-recommends $$missing \
		|| { $$sudo apt-get update && $$sudo apt-get install -y --no-install-recommends $$missing; }; \
	fi

migrate: install
	$(BIN)/alembic upgrade head

run: migrate
	$(BIN)/uvicorn app.main:app --host $(HOST) --port $(PORT)

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

# The API fuzzed against its own /openapi.json at length (tests/e2e/test_fuzz.py;
# `make test` runs the same tests briefly).
FUZZ_EXAMPLES ?= 500
FUZZ_STEPS    ?= 200
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_STEPS=$(FUZZ_STEPS) $(BIN)/pytest tests/e2e/test_fuzz.py $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app tests

# The performance bench on a fresh PostgreSQL database (BENCH_DATABASE_URL);
# wrk comes from Debian's package.
bench: install
	command -v wrk >/dev/null || apt-get install -y wrk || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/run.py

# Minutes of mixed load with Redis restarted under it (SOAK_SECONDS, 180 by
# default); PostgreSQL from TEST_DATABASE_URL. Prints its figures.
soak: install
	TEST_DATABASE_URL=$${TEST_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres} \
	$(BIN)/pytest -m soak -s tests/soak $(PYTEST_ARGS)
