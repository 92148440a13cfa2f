# mlcd — the README's commands. Each target does its own set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MLCD_HOME ?= $(CURDIR)/.mlcd
export AIRFLOW_HOME ?= $(MLCD_HOME)/airflow
# Real MNIST on developer machines and CI; a user's fresh clone falls back to scikit-learn's digits.
SHARED_MNIST := $(abspath $(CURDIR)/../shared/data/mnist.npz)
ifneq ($(wildcard $(SHARED_MNIST)),)
export MLCD_DATA ?= $(SHARED_MNIST)
endif

.PHONY: help venv demo test test-fast test-rehearsal bench mutation up down lint clean

help:
	@echo "make demo      - set up .venv and run the whole loop on the embedded default (state in $(MLCD_HOME))"
	@echo "make test      - set up .venv and run the whole test suite"
	@echo "make test-fast - unit layer only (seconds)"
	@echo "make test-rehearsal - the cluster rehearsal layer only (Postgres, Redis, Celery, S3, Prometheus on 127.0.0.1)"
	@echo "make bench     - benchmarks, each against a peer in the same run"
	@echo "make mutation  - mutation score of the safety-critical modules (not part of make test)"

$(BIN)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/mlcd demo

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m unit

# Part of `make test` too; needs Debian's postgresql, redis-server and prometheus (.ci/run installs them).
test-rehearsal: venv
	$(BIN)/python -m pytest -q -m rehearsal tests/rehearsal

bench: venv
	$(BIN)/python bench/validation.py
	@for b in training serving rollback; do \
	  if [ -f bench/$$b.py ]; then $(BIN)/python bench/$$b.py || exit 1; fi; done

# Sampled and time-boxed per module; MUTATION_ARGS="--module registry --sample 0" runs one module in full.
mutation: venv
	$(BIN)/python bench/mutation.py $(MUTATION_ARGS)

lint: venv
	$(BIN)/ruff check include dags plugins tests bench
	$(BIN)/mypy

clean:
	rm -rf $(MLCD_HOME)

up: venv
	$(BIN)/mlcd up

down: venv
	$(BIN)/mlcd down
