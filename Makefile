# The two commands a newcomer needs:
#   make run    set up .venv (pinned) and run the whole pipeline: dvc repro, results table, promotion
#   make test   run the test suite (what CI runs)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: run smoke setup test lint bench clean

run: setup
	$(PY) -m flows.pipeline

smoke: setup
	$(PY) -m flows.pipeline --profile smoke

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

test: setup
	$(PY) -m ruff check mvot flows tests
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check mvot flows tests

bench: setup
	mvot bench generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
