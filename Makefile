# Two commands do everything, on a machine with only Python 3.11+ (and make):
#   make run    set up .venv and serve on http://127.0.0.1:8000
#   make test   set up .venv with the test extras and run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test bench openapi clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.run
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

test: $(VENV)/.test
	$(BIN)/python -m ruff check service tests examples benchmarks
	$(BIN)/python -m pytest

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

# Every benchmark, one run, tables to stdout and bench-results/results.md (a few minutes).
bench: $(VENV)/.bench
	cd benchmarks && ../$(BIN)/python run_all.py

# Regenerate openapi/openapi.json from the app (tests/test_openapi.py fails when it drifts).
openapi: $(VENV)/.run
	$(BIN)/python -c 'from service.app import openapi_json; print(openapi_json(), end="")' > openapi/openapi.json

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
