# Everything runs from the project's virtualenv (.venv), created on first use.
# Settings come from the environment; see scripts/run.sh for the list and defaults.
SHELL := /bin/bash
VENV := .venv
PROCS ?=
PY := $(VENV)/bin/python

.DEFAULT_GOAL := help
.PHONY: help venv redis browser run test test-fast demo drill lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-7s %s\n", $$1, $$2}'

venv: ## create .venv and install requirements.txt (skipped when unchanged)
	@scripts/ensure-venv.sh

redis: ## install Debian's redis-server if it is missing
	@scripts/ensure-redis.sh

browser: ## install Debian's chromium if it is missing (the console's browser test)
	@scripts/ensure-chromium.sh

run: ## run every Procfile process (PROCS="web worker" for some); own Redis unless REDIS_URL
	@exec scripts/run.sh $(PROCS)

test: venv redis browser ## run the test suite (it starts its own Redis and workers)
	$(PY) -m pytest

# The rule modules, named so that collection does not import the end-to-end ones.
RULES = $(shell grep -l '^pytestmark = pytest.mark.rules' tests/test_*.py)

test-fast: venv ## the rules layer only: in-process, Redis in memory, no subprocess (seconds)
	$(PY) -m pytest -q -m rules -k "not redisserver" -p no:cacheprovider $(RULES)

demo: ## place three demo orders against a running `make run`
	@scripts/demo.sh

drill: venv redis ## the multi-host drill: each service on its own network namespace (root)
	$(PY) scripts/multihost_drill.py

lint: venv ## ruff check, and mypy --strict on sagaflow ([tool.mypy] in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: venv ## run the benchmark (ARGS="--quick", "--postgres", "--profile"); writes bench/results/
	@# Its own dependencies (DBOS, py-spy), pinned; the service and `make test` do without.
	$(PY) -m pip install -q --disable-pip-version-check -r bench/requirements.txt
	$(PY) -m bench $(ARGS)

clean: ## remove var/ (local databases, Redis data)
	rm -rf var/
