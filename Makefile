# `make run` routes the samples with no Azure at all; `make test` runs the linters, type checks and
# tests. Both install what they need into .venv first (pinned in requirements*.txt and constraints.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: help run demo test lint typecheck unit infra-check bench clean python-version azurite
.DEFAULT_GOAL := help

# `make` alone: what each target does (the `## ` comment after a target's name).
help:
	@echo "usage: make TARGET   (each installs what it needs into .venv first; Python 3.11 or 3.12)"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  \1\t/' | expand -t 16

# The pins need Python 3.11 or later, and azure-functions 1.26 installs only below 3.13: say so now,
# rather than let pip fail halfway through resolving.
python-version:
	@$(PYTHON) -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))' || { \
	  echo "error: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '(not found)');" \
	       "this project needs Python 3.11 or 3.12 (make PYTHON=python3.11 ...)" >&2; exit 1; }

$(BIN)/python: | python-version
	$(PYTHON) -m venv $(VENV)

# The command line (make run) on top of the runtime; requirements.txt alone is what the app deploys with.
# `routing` is installed editable (pyproject [project]), so the command runs from any folder.
$(VENV)/.cli: requirements.txt requirements-cli.txt constraints.txt pyproject.toml | $(BIN)/python
	$(PIP) -r requirements-cli.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev: requirements.txt requirements-cli.txt requirements-dev.txt constraints.txt pyproject.toml | $(BIN)/python
	$(PIP) -r requirements-dev.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@ $(VENV)/.cli

run: $(VENV)/.cli ## route samples/events.jsonl with samples/routes.json into out/, no Azure at all
	$(BIN)/routing run --events samples/events.jsonl --routes samples/routes.json --out out

# An outage without Azure: sensor-alerts down for batches 2-4 (its keys parked in order, its circuit open,
# the redelivery catching up), then down for the whole run (what is still parked stays in parked.jsonl),
# then the dead letters of the samples' bad messages, summarised.
demo: $(VENV)/.cli ## watch an endpoint outage locally: parking, the circuit breaker, redelivery, dead letters
	$(BIN)/routing run --events samples/events.jsonl --routes samples/routes.json --out out-demo --batch-size 5 \
	  --fail sensor-alerts:2-4
	$(BIN)/routing run --events samples/events.jsonl --routes samples/routes.json --out out-demo-down --batch-size 5 \
	  --fail sensor-alerts
	@echo "still parked (out-demo-down/parked.jsonl): $$(wc -l < out-demo-down/parked.jsonl) messages of sensor-alerts"
	$(BIN)/routing deadletters list --dir out-demo

lint: $(VENV)/.dev ## ruff, ruff format and the layers contract (import-linter)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.dev ## mypy, strict
	$(BIN)/mypy

# Azurite (the local Table/Blob server the storage tests run against), pinned in package-lock.json.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

unit: $(VENV)/.dev node_modules/.installed ## the tests (Azurite, the local AMQP peer and Event Grid receiver)
	$(BIN)/python -m pytest

# checkov and azure-functions-doctor over infra/ and the project, in their own venv: checkov pins many
# packages, so it stays out of .venv (pinned in requirements-infra.txt and constraints-infra.txt).
VENV_INFRA := .venv-infra
$(VENV_INFRA)/.installed: requirements-infra.txt constraints-infra.txt | python-version
	$(PYTHON) -m venv $(VENV_INFRA)
	$(VENV_INFRA)/bin/pip install --quiet --disable-pip-version-check -c constraints-infra.txt -r requirements-infra.txt
	touch $@

infra-check: $(VENV_INFRA)/.installed ## checkov over infra/ and the Functions doctor
	$(VENV_INFRA)/bin/checkov -d infra --framework bicep --skip-download --compact --quiet
	$(VENV_INFRA)/bin/azure-functions-doctor doctor --path .

# Local storage for `routing routes ...` and dead letters, started the way the tests start it: Azurite's
# default ports, its data in .azurite/. Stop it with Ctrl-C.
azurite: node_modules/.installed ## run Azurite (local Table/Blob storage) and print its connection string
	@echo "Azurite on 127.0.0.1:10000-10002; connection string: UseDevelopmentStorage=true"
	@echo "e.g.  export ROUTES_STORAGE=UseDevelopmentStorage=true DEADLETTER_STORAGE=UseDevelopmentStorage=true"
	node node_modules/azurite/dist/src/azurite.js --silent --disableTelemetry --location .azurite \
	  --blobHost 127.0.0.1 --queueHost 127.0.0.1 --tableHost 127.0.0.1 --skipApiVersionCheck --loose

test: lint typecheck unit infra-check ## everything CI runs

# The benchmark of issues #7 and #15 (docs/PERFORMANCE.md): stages against floors measured in the same run,
# the end-to-end path into the local peers, and `routing run` over 1,000,000 events against the
# stdlib-json router (two paired rounds, its memory from the same runs). About 8-9 minutes.
bench: $(VENV)/.dev node_modules/.installed ## the benchmark (docs/PERFORMANCE.md), about 8-9 minutes
	$(BIN)/python -m bench --events 5000 --duration 4 --run-events 1000000 --run-rounds 2

clean: ## remove the venvs, node_modules and outputs
	rm -rf $(VENV) $(VENV_INFRA) out .mypy_cache .ruff_cache node_modules
