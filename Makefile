# `make run` routes the samples with no Azure at all; `make test` runs the linters, type checks and
# tests. Both install what they need into .venv first (pinned in requirements*.txt and constraints.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: run test lint typecheck unit infra-check bench clean python-version

# The pins need Python 3.11 or later, and azure-functions 1.26 installs only below 3.13: say so now,
# rather than let pip fail halfway through resolving.
python-version:
	@$(PYTHON) -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))' || { \
	  echo "error: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '(not found)');" \
	       "this project needs Python 3.11 or 3.12 (make PYTHON=python3.11 ...)" >&2; exit 1; }

$(BIN)/python: | python-version
	$(PYTHON) -m venv $(VENV)

# The command line (make run) on top of the runtime; requirements.txt alone is what the app deploys with.
$(VENV)/.cli: requirements.txt requirements-cli.txt constraints.txt | $(BIN)/python
	$(PIP) -r requirements-cli.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-cli.txt requirements-dev.txt constraints.txt | $(BIN)/python
	$(PIP) -r requirements-dev.txt
	touch $@ $(VENV)/.cli

run: $(VENV)/.cli
	$(BIN)/python -m routing run --events samples/events.jsonl --routes samples/routes.json --out out

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# Azurite (the local Table/Blob server the storage tests run against), pinned in package-lock.json.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

unit: $(VENV)/.dev node_modules/.installed
	$(BIN)/python -m pytest

# checkov and azure-functions-doctor over infra/ and the project, in their own venv: checkov pins many
# packages, so it stays out of .venv (pinned in requirements-infra.txt and constraints-infra.txt).
VENV_INFRA := .venv-infra
$(VENV_INFRA)/.installed: requirements-infra.txt constraints-infra.txt | python-version
	$(PYTHON) -m venv $(VENV_INFRA)
	$(VENV_INFRA)/bin/pip install --quiet --disable-pip-version-check -c constraints-infra.txt -r requirements-infra.txt
	touch $@

infra-check: $(VENV_INFRA)/.installed
	$(VENV_INFRA)/bin/checkov -d infra --framework bicep --skip-download --compact --quiet
	$(VENV_INFRA)/bin/azure-functions-doctor doctor --path .

test: lint typecheck unit infra-check

# The benchmark of issue #7 (docs/PERFORMANCE.md): stages against floors measured in the same run, the
# end-to-end path into the local peers, and `routing run` memory over 1,000,000 events. About 6 minutes.
bench: $(VENV)/.dev node_modules/.installed
	$(BIN)/python -m bench --events 5000 --duration 4 --memory-events 1000000

clean:
	rm -rf $(VENV) $(VENV_INFRA) out .mypy_cache .ruff_cache node_modules
