# `make run` routes the samples with no Azure at all; `make test` runs the linters, type checks and
# tests. Both install what they need into .venv first (pinned in requirements*.txt and constraints.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: run test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt constraints.txt | $(BIN)/python
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt constraints.txt | $(BIN)/python
	$(PIP) -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	$(BIN)/python -m routing run --events samples/events.jsonl --routes samples/routes.json --out out

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

unit: $(VENV)/.dev
	$(BIN)/python -m pytest

test: lint typecheck unit

clean:
	rm -rf $(VENV) out .mypy_cache .ruff_cache
