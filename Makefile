# The two set-up commands of the README, and the pieces they are made of.
# Everything installs into .venv/ in this checkout; nothing touches the system Python.

# SPy's semantics are CPython 3.11's (docs/language.md): 3.12 already differs (its `sum`
# of floats compensates rounding), so the interpreter must be a 3.11.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: example test lint typecheck unit clean

$(STAMP): pyproject.toml
	@$(PYTHON) scripts/check_python.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Install and run an example SPy program end to end on embedded defaults.
example: $(STAMP)
	$(BIN)/jarvis run examples/invoice_approval.spy --books examples/books.toml \
		--inputs examples/invoice_approval.inputs.json

## Install dev dependencies, start the services the tests need, run every check.
test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check jarvis tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

## Install and cache the real servers the integration tests start (docs/testing.md).
.PHONY: services
services: $(STAMP)
	$(BIN)/python scripts/services.py install all

unit: $(STAMP) services
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## Run the benchmark suite (2-4 minutes on 2 cores); writes docs/performance.md and .json.
.PHONY: bench
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .jarvis .pytest_cache .mypy_cache .ruff_cache
