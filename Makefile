# Verbs people reach for. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

.PHONY: help
help: ## List the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

.PHONY: install
install: $(BIN)/.installed ## Create .venv and install the project with its test tools

.PHONY: dev
dev: install ## Run the whole service locally (embedded PostgreSQL and Redis unless URLs are set)
	$(BIN)/contacts-ingest dev

.PHONY: run
run: dev ## Same as dev

.PHONY: test
test: install ## Run the whole test suite (on embedded servers where none answer, see README)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

.PHONY: faults
faults: install ## Run only the fault-injection suite (private PostgreSQL and Redis, real processes)
	$(BIN)/python -m pytest -m faults tests/faults $(PYTEST_ARGS)

.PHONY: bench
bench: install ## Benchmark the service against its baselines in one run (~10 min; needs wrk)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/run.py

.PHONY: bench-quick
bench-quick: install ## The same benchmark, smaller and shorter (~2 min)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/run.py --quick --out bench/results/quick

SOAK_SECONDS ?= 600
.PHONY: soak
soak: install ## Steady load for SOAK_SECONDS (600) through gateway and worker; audit and RSS
	$(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS) --quiet

.PHONY: unit
unit: install ## Run the unit tests only (no servers needed)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: lint
lint: install ## Check formatting, lint, types and import directions
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: format
format: install ## Format the code and apply safe lint fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: clean
clean: ## Remove the virtualenv, caches and local dev data
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .schemathesis .contacts-ingest *.egg-info
