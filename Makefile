# Two commands set everything up: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help venv run migrate test test-fast lint format bench bench-smoke clean

help:
	@echo "make run      - create the virtualenv, migrate the SQLite default, serve on :8000"
	@echo "make test     - the whole test suite (PostgreSQL tests skip if no server answers)"
	@echo "make lint     - ruff check, ruff format --check, mypy, vulture (dead code)"
	@echo "make migrate  - migrate the database named by DLR_DATABASE_URL"
	@echo "make bench    - the ingest and read benchmarks (see bench/README.md)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/mboxii-dlr migrate
	$(BIN)/mboxii-dlr serve

migrate: $(STAMP)
	$(BIN)/mboxii-dlr migrate

test: $(STAMP)
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app
	$(BIN)/vulture

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	@mkdir -p bench/results
	$(BIN)/python -m bench.ingest --json bench/results/ingest.json
	$(BIN)/python -m bench.read --explain bench/results/plans.txt
	$(BIN)/python -m bench.events --json bench/results/events.json

bench-smoke: $(STAMP)
	$(BIN)/python -m bench.ingest --duration 2 --warmup 1
	$(BIN)/python -m bench.read --reports 20000 --requests 5 --database mboxii_bench_smoke
	$(BIN)/python -m bench.events --duration 2 --warmup 1 --events 2000 --only pg-events dispatcher

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
