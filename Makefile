# Two commands do everything, on a machine with only Python 3.11+ (and make):
#   make run    set up .venv and serve on http://127.0.0.1:8000
#   make test   set up .venv with the test extras and run the whole suite
#
# make run PORT=9000 HOST=0.0.0.0 chooses where to listen; without them, the
# BPTT_HOST / BPTT_PORT environment variables apply (default 127.0.0.1:8000).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?=
PORT ?=
# PYTHONWARNINGS=ignore: setuptools prints a boxed notice on every editable install.
PIP := PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: run test quick lint bench mutate openapi proto clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[server]'
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[test]'
	touch $@

run: $(VENV)/.run
	$(BIN)/python -m service $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# Lint, format check and the strict type check, then every test.
test: lint
	$(BIN)/python -m pytest

# The quick loop: everything but the slow system tests (container, browser, load, training).
quick: lint
	$(BIN)/python -m pytest -m "not slow"

lint: $(VENV)/.test
	$(BIN)/python -m ruff check service tests examples benchmarks
	$(BIN)/python -m ruff format --check service tests examples benchmarks
	$(BIN)/python -m mypy

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[test,bench]'
	touch $@

# Every benchmark, one run, tables to stdout and bench-results/results.md (a few minutes).
bench: $(VENV)/.bench
	cd benchmarks && ../$(BIN)/python run_all.py

# Mutation testing of the code that decides answers (slow; docs/testing.md): both sets,
# or one with `make mutate SET=rest` (core: engine, checks; rest: codec, V2 decoding, settings, admission).
SET ?= core rest
mutate: $(VENV)/.test
	for set in $(SET); do scripts/mutate.sh $$set || exit 1; done

# Regenerate openapi/openapi.json from the app (tests/test_openapi.py fails when it drifts).
openapi: $(VENV)/.run
	$(BIN)/python -c 'from service.openapi import openapi_json; print(openapi_json(), end="")' > openapi/openapi.json

# Regenerate the gRPC modules from service/v2/proto/inference.proto (tests/test_grpc_proto.py fails when they drift).
proto: $(VENV)/.test
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. service/v2/proto/inference.proto

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache mutants
