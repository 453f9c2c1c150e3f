# pmd developer commands. `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR := .run
STAMP := $(VENV)/.installed
# tini and supervisord for the bench's anchors, when the system has none (scripts/bench-deps)
BENCH_VENV := .venv-bench
BENCH_PATH := PATH="$$PATH:$(CURDIR)/$(BENCH_VENV)/bin"

.PHONY: run test unit integration lint bench bench-metrics bench-imports chaos clean system-deps

$(STAMP): pyproject.toml
	@./scripts/system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

system-deps:
	@./scripts/system-deps

## Start pmd in the foreground with the example config (a subreaper, not PID 1).
run: $(STAMP)
	@mkdir -p $(RUN_DIR)/state $(RUN_DIR)/log
	@$(BIN)/python scripts/run-config config $(RUN_DIR)/config
	$(BIN)/pmd_init --config-dir $(RUN_DIR)/config --state-dir $(RUN_DIR)/state \
		--log-dir $(RUN_DIR)/log --socket $(RUN_DIR)/pmd.sock \
		--host 127.0.0.1 --port 9615

## The whole test suite: unit, API and integration (pmd as PID 1 in a PID namespace).
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check pmd_init tests integration bench
	$(BIN)/mypy pmd_init

## pmd beside tini and supervisord, each as PID 1 of its own PID namespace (BENCH_ARGS=--quick).
bench: $(STAMP)
	@PYTHON=$(PYTHON) ./scripts/bench-deps $(BENCH_VENV)
	$(BENCH_PATH) $(BIN)/python bench/run.py $(BENCH_ARGS)

## The fault suite (docs/faults.md): a crash storm, 100 crash-looping and 1000 programs,
## a log flood, stalled clients, kill -9 during API writes, a full state disk.
chaos: $(STAMP)
	@PYTHON=$(PYTHON) ./scripts/bench-deps $(BENCH_VENV)
	$(BENCH_PATH) $(BIN)/python bench/chaos.py

## A scrape of GET /metrics with 100 programs, and prometheus_client's import cost.
bench-metrics: $(STAMP)
	$(BIN)/python bench/metrics.py

## What each part of pmd's imports costs, in time and RSS, in the order a start loads them.
bench-imports: $(STAMP)
	$(BIN)/python bench/imports.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(RUN_DIR) .pytest_cache
