# clstream — every target sets up what it needs (venv, packages, broker jars) by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv installs from its cache by hard links: a fresh clone's venv (torch included) takes seconds.
UV := $(BIN)/uv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
PYTEST_ARGS ?=
# make soak: minutes of steady load per delivery mode, the model (default|tiny), where results go,
# and any further `clstream soak` flags (e.g. SOAK_ARGS="--workers 4"). docs/soak.md.
SOAK_MINUTES ?= 30
SOAK_MODEL ?= default
SOAK_OUT ?= out/soak
SOAK_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: kcat help venv demo test test-unit check fmt lint types soak gpu-carry broker-start broker-stop clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(UV): $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

$(STAMP): pyproject.toml | $(UV)
	$(UV) pip install --python $(BIN)/python -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## create .venv and install clstream with its dev tools

demo: venv ## start a local Kafka broker and stream real tweets through the classifier
	$(BIN)/clstream demo

test: venv kcat ## every test: unit and integration (real local Kafka broker + real local Ray)
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

test-unit: venv ## unit tests only (no broker, no Ray)
	$(BIN)/python -m pytest -ra -m "not integration" $(PYTEST_ARGS)

# Each soak mode in a process of its own: the driver's RSS is then that run's alone.
soak: venv kcat ## not in CI: SOAK_MINUTES (30) per mode at half capacity, an actor SIGKILLed every 2 min; then the broker-outage sweep
	@status=0; \
	set -x; \
	for mode in at-least-once exactly-once; do \
	  $(BIN)/clstream soak --minutes $(SOAK_MINUTES) --delivery $$mode --model $(SOAK_MODEL) --out $(SOAK_OUT) $(SOAK_ARGS) || status=1; \
	done; \
	$(BIN)/clstream soak --outage-sweep --delivery both --model $(SOAK_MODEL) --out $(SOAK_OUT) $(SOAK_ARGS) || status=1; \
	{ set +x; } 2>/dev/null; \
	echo "results in $(SOAK_OUT)/ (soak-*.md, outage-sweep.md)"; exit $$status

check: fmt lint types test-unit ## format check, lint, types, unit tests

fmt: venv
	$(BIN)/ruff format --check schemas workers pipelines tests

lint: venv
	$(BIN)/ruff check schemas workers pipelines tests

types: venv
	$(BIN)/mypy

kcat: ## the integration tests use kcat as an independent Kafka client
	@command -v kcat >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null; } \
	  || { echo "kcat is missing and could not be installed (Debian package kcat)"; exit 1; }

# What a lent GPU machine needs (torch and transformers only, at most 64 MiB carried): docs/gpu.md.
gpu-carry: venv ## write out/gpu-carry for pipelines/bench/gpu_model_only.py measure on a GPU machine
	$(BIN)/python -m pipelines.bench.gpu_model_only prepare --carry out/gpu-carry

broker-start: venv ## start the local broker on 127.0.0.1:9092
	$(BIN)/clstream broker start

broker-stop: venv ## stop the local broker
	$(BIN)/clstream broker stop

clean: ## remove the venv and caches (not the broker jars or pip/uv caches)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
