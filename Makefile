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

.PHONY: help venv demo test test-fast test-rehearsal test-install images test-images bench mutation up down lint clean

help:
	@echo "make demo      - set up .venv and run the whole loop on the embedded default (state in $(MLCD_HOME))"
	@echo "make test      - set up .venv and run the whole test suite"
	@echo "make test-fast - unit layer only (seconds)"
	@echo "make test-rehearsal - the cluster rehearsal layer only (Postgres, Redis, Celery, S3, Prometheus on 127.0.0.1)"
	@echo "make test-install - the wheel installed like a user: fresh venvs per extra, a fresh Airflow (minutes)"
	@echo "make images   - build the gateway, trainer and airflow images with podman (deploy/docker/build.sh)"
	@echo "make test-images - the images layer only: build, role contents, read-only root, health check, pip-audit"
	@echo "make bench     - benchmarks, each against a peer in the same run"
	@echo "make mutation  - mutation score of the safety-critical modules (not part of make test)"
	@echo "make up        - start Airflow (UI with the mlcd page: Browse -> mlcd rollouts, /mlcd/), MLflow and the gateway on 127.0.0.1"
	@echo "                 (MLCD_HOME=.mlcd/demo make up: the demo's state, with the settings saved with it)"
	@echo "make down      - stop what make up started"
	@echo "make lint      - ruff, then mypy"
	@echo "make clean     - delete the state under $(MLCD_HOME)"

$(BIN)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/mlcd demo

# Three pytest processes side by side (most of the suite waits on servers, schedulers, image builds and canary
# windows, so 2 cores are mostly idle with one): (a) the newcomer's demo, the images and the unit layer, (b) the
# cluster rehearsal and the fault drills, both in the background with their logs printed at the end, and every
# other layer in the foreground. Each process has its own AIRFLOW_HOME, MLCD_HOME and free ports
# (tests/conftest.py). Every test is in exactly one of the three.
TEST_SIDE_A := newcomer or images or unit
TEST_SIDE_B := (rehearsal or faults) and not ($(TEST_SIDE_A))
TEST_MAIN := not ($(TEST_SIDE_A)) and not ($(TEST_SIDE_B))
test: venv
	@mkdir -p $(MLCD_HOME); a_log=$(MLCD_HOME)/test-side-a.log; b_log=$(MLCD_HOME)/test-side-b.log; start=$$(date +%s); \
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "$(TEST_SIDE_A)" > $$a_log 2>&1 & a=$$!; \
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "$(TEST_SIDE_B)" > $$b_log 2>&1 & b=$$!; \
	$(BIN)/python -m pytest -q -m "$(TEST_MAIN)"; main_rc=$$?; \
	wait $$a; a_rc=$$?; wait $$b; b_rc=$$?; \
	echo "---- side run a ($(TEST_SIDE_A)), exit $$a_rc ----"; cat $$a_log; \
	echo "---- side run b ($(TEST_SIDE_B)), exit $$b_rc ----"; cat $$b_log; \
	echo "make test: main run exit $$main_rc, side runs exit $$a_rc and $$b_rc, $$(( $$(date +%s) - start )) s"; \
	[ $$main_rc -eq 0 ] && [ $$a_rc -eq 0 ] && [ $$b_rc -eq 0 ]

test-fast: venv
	$(BIN)/python -m pytest -q -m unit

# Part of `make test` too; needs Debian's postgresql, redis-server and prometheus (.ci/run installs them).
test-rehearsal: venv
	$(BIN)/python -m pytest -q -m rehearsal tests/rehearsal

# Part of `make test` too: the built wheel into fresh virtualenvs per extra, as README "Install into your Airflow".
test-install: venv
	$(BIN)/python -m pytest -q -m install tests/install

# Podman with a locally made Debian base (deploy/docker/base.sh); .ci/run installs podman, buildah, runc, mmdebstrap.
images:
	deploy/docker/build.sh

test-images: venv
	$(BIN)/python -m pytest -q -m images tests/images

bench: venv
	@command -v wrk >/dev/null || echo "make bench: WARNING wrk is not installed (Debian: apt-get install wrk); bench/serving.py falls back to Python client threads that share the cores with the servers"
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
