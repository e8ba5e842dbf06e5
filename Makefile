# `make demo` and `make test` set themselves up: a .venv with the project and its dev tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test quick check lint types pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ollama-cloud demo

test: lint types pytest

# The edit loop: lint, types and the tests that start no process of their own (about 30 s).
quick: lint types
	HYPOTHESIS_PROFILE=quick $(BIN)/python -m pytest -q -m "not e2e"

check: test

lint: $(STAMP)
	$(BIN)/ruff check orchestrator workers standins tests bench
	$(BIN)/ruff format --check orchestrator workers standins tests bench

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
